"""Verify stage: the float model and every artifact, measured the same way on the test split.

Per row: top-1 accuracy, macro-F1, per-class recall, confusion matrix, accuracy delta and top-1
agreement against the float torch model (the reference row), the same two against the row it
was derived from (ONNX vs torch, int8 vs fp32), batch-1 latency p50/p95/p99 after warm-up with a
fixed thread count, throughput at a larger batch, and size on disk.
"""

from __future__ import annotations

import time

import numpy as np

from edgepipe.core.console import console, progress
from edgepipe.core.errors import MissingArtifactError
from edgepipe.core.files import write_json
from edgepipe.core.metrics import agreement, classification_metrics, machine_info, measure_latency
from edgepipe.core.preprocess import PreprocessSpec
from edgepipe.pipeline.config import BuildConfig, VerifyConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.manifest import Manifest, float_checkpoint
from edgepipe.pipeline.records import VERIFY_SCHEMA, VerifyResults, checked
from edgepipe.runtime.predictor import softmax
from edgepipe.targets import get_target
from edgepipe.targets.base import Artifact, Runner

REFERENCE = "torch-fp32"


def measure(runner: Runner, rgb8: np.ndarray, spec: PreprocessSpec, vcfg: VerifyConfig) -> dict:
    """Logits on all images, then batch-1 latency and batch throughput, all through runner.infer."""
    with runner:
        info = runner.runtime_info()
        batch = min(vcfg.throughput_batch, runner.max_batch or vcfg.throughput_batch)
        logits = np.concatenate([runner.infer(spec.normalize(rgb8[i:i + batch])) for i in range(0, len(rgb8), batch)])
        timing = measure_latency(runner, spec.normalize(rgb8[:1]),
                                 spec.normalize(np.resize(rgb8, (batch,) + rgb8.shape[1:])), vcfg.runs, vcfg.warmup)
    return {"logits": logits, "runtime": info, **timing}


def top1_confidence(logits: np.ndarray) -> list[float]:
    """Softmax probability of the top-1 class per image, 4 decimals (what a reviewer reads)."""
    return [round(float(v), 4) for v in softmax(logits).max(1)]


def _row(measured: dict, labels: np.ndarray, classes, reference: np.ndarray, parent_name: str,
         parent: np.ndarray, ref_acc: float) -> dict:
    pred = measured["logits"].argmax(1)
    metrics = classification_metrics(pred, labels, classes)
    metrics |= {"predictions": pred.tolist(), "confidence": top1_confidence(measured["logits"])}
    parent_acc = float((parent.argmax(1) == labels).mean())
    return {**metrics, "accuracy_delta": metrics["accuracy"] - ref_acc, "agreement": agreement(pred, reference.argmax(1)),
            "vs_parent": {"parent": parent_name, "accuracy_delta": metrics["accuracy"] - parent_acc,
                          "agreement": agreement(pred, parent.argmax(1)),
                          "max_abs_logit_diff": float(np.abs(measured["logits"] - parent).max())},
            "latency_ms": measured["latency_ms"], "throughput": measured["throughput"], "runtime": measured["runtime"]}


def run_verify(cfg: BuildConfig, data: PreparedData, manifest: Manifest, artifacts: list[Artifact]) -> dict:
    from edgepipe.pipeline.torch_model import TorchRunner, load_checkpoint

    t0 = time.perf_counter()
    checkpoint = float_checkpoint(manifest)
    model, meta = load_checkpoint(checkpoint)
    if meta["classes"] != list(data.classes):
        raise MissingArtifactError("the checkpoint was trained on other classes than this dataset has",
                                   "rerun `edgepipe build` with this config")
    x_te, y_te = data.subset("test")
    vcfg = cfg.verify
    rows, logits = [], {}
    with progress() as bar:
        task = bar.add_task("verify", total=1 + len(artifacts), status=REFERENCE)
        ref = measure(TorchRunner(model, vcfg.threads), x_te, data.spec, vcfg)
        logits[REFERENCE] = ref["logits"]
        ref_acc = float((ref["logits"].argmax(1) == y_te).mean())
        rows.append({"name": REFERENCE, "target": "torch", "precision": "fp32", "status": "ok", "reason": None,
                     "proxy": None, "details": {}, "size_bytes": checkpoint.stat().st_size,
                     **_row(ref, y_te, data.classes, ref["logits"], REFERENCE, ref["logits"], ref_acc)})
        bar.advance(task)
        for a in artifacts:
            bar.update(task, status=a.name)
            row = {"name": a.name, "target": a.target, "precision": a.precision, "status": a.status,
                   "reason": a.reason, "proxy": a.proxy, "details": a.details, "size_bytes": a.size_bytes()}
            if a.status == "built":
                parent_name = a.parent if a.parent in logits else REFERENCE
                try:
                    measured = measure(get_target(a.target).load(a, vcfg.threads), x_te, data.spec, vcfg)
                except Exception as e:  # a broken artifact is a result, not a crash
                    row |= {"status": "failed", "reason": f"could not run: {type(e).__name__}: {e}".splitlines()[0]}
                    console.print(f"[bold red]{a.name}: {row['reason']}")
                else:
                    logits[a.name] = measured["logits"]
                    row |= {"status": "ok", **_row(measured, y_te, data.classes, ref["logits"], parent_name,
                                                    logits[parent_name], ref_acc)}
            rows.append(row)
            bar.advance(task)
    results = {"schema": VERIFY_SCHEMA, "test_images": int(len(y_te)), "classes": list(data.classes),
               "reference": REFERENCE, "machine": machine_info(vcfg.threads),
               "method": {"warmup": vcfg.warmup, "runs": vcfg.runs, "batch_latency": 1,
                          "throughput_batch": vcfg.throughput_batch, "timing": "wall clock around runner.infer"},
               "rows": rows, "test_set": data.images_of("test")}
    path = write_json(cfg.output_dir / "verify" / "results.json", checked(VerifyResults, results, "verify/results.json"))
    manifest.record_stage("verify", {"results": path}, {r["name"]: r.get("accuracy") for r in rows},
                          wall_s=round(time.perf_counter() - t0, 1))
    return results
