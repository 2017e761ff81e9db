"""`edgepipe engine BUNDLE`: build the TensorRT engine of a TensorRT bundle on the device itself.

A plan is tied to its TensorRT version and GPU, so it is built where it runs, from the ONNX the
bundle carries, with targets/trt_engine.py (the real TensorRT API, 8.5 to 11.x). The plan and
engine.json (its sha256, the TensorRT version) are the bundle's `device_files`: the integrity check
allows them, and the Predictor checks the plan against engine.json before loading it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from edgepipe.core.errors import BundleError, EngineSkipped
from edgepipe.core.files import atomic_output, sha256_file
from edgepipe.runtime.bundle import Bundle, load_bundle

SKIP_FIX = "run `edgepipe engine` on the Jetson: JetPack provides TensorRT; pip install cuda-python"


def _tensorrt():
    """(tensorrt module, edgepipe.targets.trt_engine) or EngineSkipped naming what is missing."""
    try:
        import tensorrt

        from edgepipe.targets import trt_engine

        trt_engine._cudart()
    except ImportError as e:
        raise EngineSkipped(f"{e.name or 'tensorrt'} is not installed here: TensorRT engine build skipped",
                            SKIP_FIX) from None
    return tensorrt, trt_engine


def engine_onnx(bundle: Bundle, trt_major: int) -> Path:
    """The graph TensorRT parses: int8 -> the Q/DQ graph; fp16 -> the float graph, or on TensorRT 11
    (no BuilderFlag.FP16) the fp16-converted one. Same choice as the bundle's build_engine.sh."""
    if bundle.precision == "fp16" and trt_major >= 11:
        return bundle.root / "model_fp16.onnx"
    return bundle.model_path


def build_bundle_engine(path: str | Path, max_batch: int = 8, workspace_mb: int = 1024,
                        dla_core: int | None = None, trusted_keys=None) -> dict:
    # refuses a changed bundle (or, with trusted_keys, one not signed by them) before spending minutes on it
    bundle = load_bundle(path, trusted_keys=trusted_keys)
    if bundle.target != "tensorrt":
        raise BundleError(f"{bundle.name} is a {bundle.target} bundle: it runs as it is, with no engine to build",
                          "pass a TensorRT bundle (dist/<name>/tensorrt-<precision>)")
    trt, trt_engine = _tensorrt()
    onnx = engine_onnx(bundle, trt_engine.major_version(trt))
    plan, record = bundle.root / "model.plan", bundle.root / "engine.json"
    # the plan lands under its name only when complete; engine.json last, as the commit record
    with atomic_output(plan) as tmp:
        trt_engine.build_engine(onnx, tmp, bundle.precision, max_batch=max_batch, workspace_mb=workspace_mb,
                                timing_cache=bundle.root / "timing.cache", dla_core=dla_core)
    info = {"tensorrt": trt.__version__, "onnx": onnx.name, "precision": bundle.precision, "max_batch": max_batch,
            "dla_core": dla_core, "plan_sha256": sha256_file(plan),
            "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    with atomic_output(record) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return info
