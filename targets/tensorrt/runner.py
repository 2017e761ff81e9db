"""TensorRT on the device: the engine runner, the check of a plan against its engine.json, and the
engine build `edgepipe engine` runs (a plan is tied to its TensorRT version and GPU, so it is built
where it runs, from the ONNX the bundle carries, with trt_engine.py: the real TensorRT API, 8.5 to
11.x). The plan and engine.json are the bundle's device files: the integrity check allows them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from edgepipe.core.errors import BundleError
from edgepipe.core.files import atomic_output, sha256_file
from edgepipe.targets.base import Artifact, Device, Runner

PROXY_LABEL = "TensorRT Q/DQ graph run on ONNX Runtime CPU (proxy: TensorRT's kernels differ)"
DEVICE_FILES = ("model.plan", "engine.json", "timing.cache")


class TensorRtEngineRunner(Runner):
    """A serialized plan run through trt_engine.TrtRunner (which keeps its trt.Runtime alive)."""

    def __init__(self, plan: Path, threads: int, name: str):
        super().__init__(name, threads)
        self.plan = plan
        self.runner = None

    def activate_impl(self) -> None:
        from edgepipe.targets.tensorrt.trt_engine import TrtRunner

        self.runner = TrtRunner(self.plan)
        self.runner.activate()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.runner.infer(x)

    def deactivate_impl(self) -> None:
        self.runner.deactivate()
        self.runner = None

    @property
    def max_batch(self) -> int | None:
        """The engine's optimization profile caps the batch (build_engine: --max-batch, default 8):
        verify, the fallback, check and bench split their batches by it."""
        return self.runner.max_batch if self.runner is not None else None

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        if self.runner is None or self.runner.input_shape is None:
            return None
        return tuple(None if d == -1 else d for d in self.runner.input_shape)

    @property
    def input_name(self) -> str | None:
        return self.runner.input if self.runner is not None else None


def engine_onnx(model: Path, precision: str, trt_major: int) -> Path:
    """The graph TensorRT parses: int8 -> the Q/DQ graph; fp16 -> the float graph, or on TensorRT 11
    (no BuilderFlag.FP16) the fp16-converted one. Same choice as the bundle's build_engine.sh."""
    if precision == "fp16" and trt_major >= 11:
        return model.with_name("model_fp16.onnx")
    return model


def _tensorrt():
    """(tensorrt, trt_engine) once TensorRT and cuda-python import here; ImportError otherwise."""
    TensorRtDevice().require()
    import tensorrt

    from edgepipe.targets.tensorrt import trt_engine

    return tensorrt, trt_engine


class TensorRtDevice(Device):
    package = "tensorrt"
    install = "on the Jetson, JetPack provides TensorRT; pip install cuda-python"
    pin_version = False  # JetPack decides the TensorRT version; the engine is built for it on the device
    device_files = DEVICE_FILES
    proxy = PROXY_LABEL
    builds_on_device = "TensorRT engine"

    def require(self) -> None:
        import tensorrt  # noqa: F401

        from edgepipe.targets.tensorrt.trt_engine import _cudart

        _cudart()

    def runner(self, artifact: Artifact, threads: int) -> Runner:
        return TensorRtEngineRunner(artifact.path, threads, artifact.name)

    def proxy_runner(self, artifact: Artifact, threads: int) -> Runner:
        from edgepipe.targets.onnxruntime.runner import OnnxRuntimeDevice, OrtRunner

        OnnxRuntimeDevice().require()
        return OrtRunner(artifact.path, threads, artifact.name)

    def bundle_model(self, root: Path, model: Path, name: str) -> Path:
        """model.plan written on this device by `edgepipe engine`, checked against its engine.json."""
        plan, record = root / "model.plan", root / "engine.json"
        if not plan.is_file() or not record.is_file():
            raise BundleError(f"{name} holds no TensorRT engine for this device yet",
                              f"run `edgepipe engine {root}` on the device first")
        try:
            recorded = json.loads(record.read_text())
            recorded = recorded.get("plan_sha256") if isinstance(recorded, dict) else None
        except ValueError:  # not JSON (or not UTF-8): treated as no record at all
            recorded = None
        if recorded is None:
            raise BundleError(f"{name}: engine.json is damaged", f"rebuild the engine: edgepipe engine {root}")
        if recorded != sha256_file(plan):
            raise BundleError(f"{name}: model.plan does not match engine.json (changed after `edgepipe engine`)",
                              f"rebuild it: edgepipe engine {root}")
        return plan

    def build_on_device(self, root: Path, model: Path, precision: str, max_batch: int = 8, workspace_mb: int = 1024,
                        dla_core: int | None = None) -> dict:
        """Build model.plan in the bundle folder; engine.json (its sha256, the TensorRT version) last,
        as the commit record. Raises ImportError when TensorRT or cuda-python is missing."""
        trt, trt_engine = _tensorrt()
        onnx = engine_onnx(model, precision, trt_engine.major_version(trt))
        plan, record = root / "model.plan", root / "engine.json"
        with atomic_output(plan) as tmp:  # the plan lands under its name only when complete
            trt_engine.build_engine(onnx, tmp, precision, max_batch=max_batch, workspace_mb=workspace_mb,
                                    timing_cache=root / "timing.cache", dla_core=dla_core)
        info = {"tensorrt": trt.__version__, "onnx": onnx.name, "precision": precision, "max_batch": max_batch,
                "dla_core": dla_core, "plan_sha256": sha256_file(plan),
                "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        with atomic_output(record) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
        return info

    def runtime_requirement(self, versions: dict) -> dict:
        return {"package": "tensorrt", "version": None,
                "install": "JetPack provides TensorRT; pip install 'edgepipe[runtime]' cuda-python"}
