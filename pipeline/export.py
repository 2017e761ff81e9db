"""Export stage: the fine-tuned checkpoint -> ONNX, checked, simplified, and proven equal to torch.

Uses torch's dynamo exporter: for TF-"same"-padded backbones it folds the padding into the
convolutions at a fixed input size, where the TorchScript exporter leaves a runtime
Shape/Pad subgraph in front of every strided conv.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from edgepipe.core.console import console
from edgepipe.core.errors import CheckFailed, MissingArtifactError
from edgepipe.core.files import atomic_output, write_json
from edgepipe.core.metrics import agreement
from edgepipe.pipeline.config import BuildConfig, ParityConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.manifest import Manifest, float_checkpoint
from edgepipe.pipeline.torch_model import load_checkpoint, torch_logits

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: torch.nn.Module, path: Path, image_size: int, opset: int, dynamic_batch: bool, simplify: bool) -> Path:
    model = model.cpu().eval()
    example = (torch.zeros(2, 3, image_size, image_size),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        if not dynamic_batch:
            example = (torch.zeros(1, 3, image_size, image_size),)
        program = torch.onnx.export(model, example, dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
        proto = program.model_proto
        if simplify:
            import onnxslim

            proto = onnxslim.slim(proto)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of the exported graph on ONNX Runtime, through the runner verify times."""
    import os

    from edgepipe.targets.onnxruntime.runner import OrtRunner

    with OrtRunner(path, threads=os.cpu_count() or 1, name="export") as runner:
        return runner.infer_batched(x, batch=max(1, len(x)))


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    return {"images": int(len(reference)),
            "max_abs_diff": float(np.abs(reference - candidate).max()),
            "top1_agreement": agreement(candidate.argmax(1), reference.argmax(1))}


def check_parity(result: dict, limits: ParityConfig) -> None:
    if result["max_abs_diff"] > limits.max_abs_diff or result["top1_agreement"] < limits.min_agreement:
        raise CheckFailed(
            f"ONNX export does not match torch: max |logit diff| {result['max_abs_diff']:.2e} "
            f"(limit {limits.max_abs_diff:.0e}), top-1 agreement {result['top1_agreement']:.2%} "
            f"(limit {limits.min_agreement:.0%})",
            "rerun with --debug and report the backbone; raise export.parity limits only if you accept the drift")


def run_export(cfg: BuildConfig, data: PreparedData, manifest: Manifest) -> Path:
    t0 = time.perf_counter()
    model, meta = load_checkpoint(float_checkpoint(manifest))
    if meta["classes"] != list(data.classes):
        raise MissingArtifactError(f"the checkpoint was trained on classes {meta['classes']}, the dataset has {list(data.classes)}",
                                   "rerun `edgepipe finetune` with this config")
    out = cfg.output_dir / "export"
    onnx_path = export_onnx(model, out / "model.onnx", cfg.model.image_size, cfg.export.opset,
                            cfg.export.dynamic_batch, cfg.export.simplify)
    x_va, _ = data.subset("val")
    x_va = x_va[: cfg.export.parity.images]
    result = parity(torch_logits(model, x_va, data.spec, torch.device("cpu")), ort_logits(onnx_path, data.spec.normalize(x_va)))
    graph = onnx.load(str(onnx_path))
    result |= {"passed": True, "limits": cfg.export.parity.model_dump(), "nodes": len(graph.graph.node),
               "opset": max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))}
    try:
        check_parity(result, cfg.export.parity)
    except CheckFailed:
        result["passed"] = False
        manifest.record_stage("export", {"onnx": onnx_path, "parity": write_json(out / "parity.json", result)}, result)
        raise
    parity_path = write_json(out / "parity.json", result)
    manifest.record_stage("export", {"onnx": onnx_path, "parity": parity_path}, result,
                          wall_s=round(time.perf_counter() - t0, 1))
    console.print(f"ONNX parity on {result['images']} val images: max |diff| {result['max_abs_diff']:.1e}, "
                  f"agreement {result['top1_agreement']:.1%}")
    return onnx_path
