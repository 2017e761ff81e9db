"""Side-by-side benchmark: a hand-written int8 script vs edgepipe's artifacts, one process, one machine.

Usage (after `make run`):  .venv/bin/python bench/naive_vs_edgepipe.py [--config examples/elpv.yaml]

Both paths start from the same fine-tuned checkpoint (`<output_dir>/finetune/model.pt`) and are
scored on the same test split. The naive path is what a user writes with library defaults:
  torch.onnx.export (opset 17, dynamic batch) -> ORT quant_pre_process + quantize_static
  (QDQ, per-channel, MinMax, 256 train images); ov.convert_model -> nncf.quantize (defaults,
  256 train images) -> core.compile_model(model, "CPU") with no settings.
edgepipe's rows are the artifacts the build recorded in its manifest, loaded through the same
runners verify uses. Every row is timed with Runner.time (batch 1, wall clock around infer), in
interleaved rounds so machine-load drift hits all rows alike; claim speed only as these ratios.
Results go to bench/results/latest.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from edgepipe.core.metrics import latency_stats, machine_info
from edgepipe.pipeline.backbones import preprocess_spec
from edgepipe.pipeline.config import load_config
from edgepipe.pipeline.data import prepare
from edgepipe.pipeline.manifest import Manifest, tool_versions
from edgepipe.pipeline.quantize import recorded_artifacts
from edgepipe.pipeline.torch_model import TorchRunner, load_checkpoint
from edgepipe.targets import get_target
from edgepipe.targets.base import Runner
from edgepipe.targets.onnxruntime.runner import OrtRunner

RESULTS = Path(__file__).parent / "results"
NAIVE_CALIBRATION = 256
EDGEPIPE_ROWS = ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8")


class NaiveOpenVinoRunner(Runner):
    """core.compile_model(model, "CPU") with no configuration: what a first script does."""

    def __init__(self, ov_model, name: str):
        super().__init__(name, threads=0)
        self.ov_model, self.request = ov_model, None

    def activate_impl(self) -> None:
        import openvino as ov

        self.request = ov.Core().compile_model(self.ov_model, "CPU").create_infer_request()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()

    def deactivate_impl(self) -> None:
        self.request = None


class NaiveOrtRunner(OrtRunner):
    """InferenceSession(path) with default session options."""

    def activate_impl(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0]


def naive_runners(model, x_cal: np.ndarray, image_size: int, work: Path) -> dict[str, Runner]:
    import nncf
    import openvino as ov
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, pre, int8 = work / "naive.onnx", work / "naive-pre.onnx", work / "naive-int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        # The exporter most tutorials show: TorchScript, opset 17, dynamic batch.
        torch.onnx.export(model, torch.zeros(1, 3, image_size, image_size), str(onnx_path), opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": x_cal[i:i + 1]} for i in range(len(x_cal)))

        def get_next(self):
            return next(self.it, None)

    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    ov_fp32 = ov.convert_model(str(onnx_path))
    ov_int8 = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset([x_cal[i:i + 1] for i in range(len(x_cal))]))
    return {"naive onnxruntime-fp32": NaiveOrtRunner(onnx_path, 0, "naive onnxruntime-fp32"),
            "naive onnxruntime-int8": NaiveOrtRunner(int8, 0, "naive onnxruntime-int8"),
            "naive openvino-fp32": NaiveOpenVinoRunner(ov_fp32, "naive openvino-fp32"),
            "naive openvino-int8": NaiveOpenVinoRunner(ov_int8, "naive openvino-int8")}


def run(config: Path, rounds: int, runs: int) -> dict:
    import torch

    cfg = load_config(config)
    threads = cfg.verify.threads
    data = prepare(cfg.dataset, preprocess_spec(cfg.model.backbone, cfg.model.image_size), cfg.seed)
    manifest = Manifest.open(cfg)
    model, _ = load_checkpoint(manifest.output("finetune", "checkpoint"))
    x_te, y_te = data.subset("test")
    x_te = data.spec.normalize(x_te)
    x_tr, _ = data.subset("train")
    x_cal = data.spec.normalize(x_tr[np.random.default_rng(cfg.seed).permutation(len(x_tr))[:NAIVE_CALIBRATION]])

    torch.set_num_threads(threads)
    runners: dict[str, Runner] = {"torch eager fp32": TorchRunner(model, threads, "torch eager fp32")}
    work = Path(tempfile.mkdtemp(prefix="edgepipe-bench-"))
    t0 = time.perf_counter()
    runners |= naive_runners(model, x_cal, cfg.model.image_size, work)
    naive_build_s = time.perf_counter() - t0
    for a in recorded_artifacts(manifest):
        if a.name in EDGEPIPE_ROWS and a.status == "built":
            runners[f"edgepipe {a.name}"] = get_target(a.target).load(a, threads)

    rows: dict[str, dict] = {}
    for name, r in runners.items():
        r.activate()
        rows[name] = {"logits": r.infer_batched(x_te), "times": [], "runtime": r.runtime_info()}
        r.time(x_te[:1], 0, warmup=20)
    for _ in range(rounds):  # interleaved: drift in machine load hits every row alike
        for name, r in runners.items():
            rows[name]["times"] += r.time(x_te[:1], runs)
    for r in runners.values():
        r.deactivate()

    ref = rows["torch eager fp32"]["logits"].argmax(1)
    ref_acc = float((ref == y_te).mean())
    out = []
    for name, row in rows.items():
        pred = row["logits"].argmax(1)
        out.append({"name": name, "accuracy": float((pred == y_te).mean()),
                    "accuracy_delta": float((pred == y_te).mean()) - ref_acc, "agreement": float((pred == ref).mean()),
                    "latency_ms": latency_stats(row["times"]), "runtime": row["runtime"]})
    p50 = {r["name"]: r["latency_ms"]["p50"] for r in out}
    for r in out:
        r["speedup_vs_torch"] = p50["torch eager fp32"] / r["latency_ms"]["p50"]
        r["speedup_vs_naive_openvino_int8"] = p50["naive openvino-int8"] / r["latency_ms"]["p50"]
    return {"config": str(config), "test_images": len(y_te), "rounds": rounds, "runs_per_round": runs,
            "naive_build_s": round(naive_build_s, 1), "machine": machine_info(threads) | {"isa": _isa()},
            "versions": tool_versions(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": out}


def _isa() -> list[str]:
    """The CPU features that decide int8 / bf16 kernel choice (x86 Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# naive script vs edgepipe ({result['date']})", "",
             (
             f"Machine: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs, {m.get('threads')} threads; "
             f"{result['test_images']} test images; batch 1, {result['rounds']} interleaved rounds x "
             f"{result['runs_per_round']} runs per row. Config `{result['config']}`."),
             f"CPU features: {', '.join(m.get('isa', [])) or 'unknown'}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items()) + ".", "",
             "| path | accuracy | Δ pt vs torch | agreement | p50 ms | p95 ms | x torch eager | x naive OV int8 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['name']} | {r['accuracy']:.2%} | {100 * r['accuracy_delta']:+.2f} | {r['agreement']:.2%} | "
                     f"{lat['p50']:.2f} | {lat['p95']:.2f} | {r['speedup_vs_torch']:.2f} | "
                     f"{r['speedup_vs_naive_openvino_int8']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("examples/elpv.yaml"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    result = run(args.config, args.rounds, args.runs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (RESULTS / "latest.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
