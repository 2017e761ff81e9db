"""TensorRT target (Jetson / NVIDIA GPUs): fp16 and int8 engines, built on the device.

A plan is tied to its TensorRT version and GPU, so the portable product is a device bundle:
the ONNX TensorRT should parse (a Q/DQ graph by TensorRT's rules for int8, fp32 + fp16-converted
graphs for fp16), the calibration data, the preprocessing spec and `build_engine.sh`, which runs
the standalone trt_engine.py. Where TensorRT is importable the engine is also built and run here;
where it is not, the row is reported `skipped` and the int8 Q/DQ graph is verified on ONNX
Runtime as a labelled proxy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edgepipe.calibration.set import CalibrationSet
from edgepipe.core.files import atomic_output
from edgepipe.targets.base import Artifact, Runner, Target
from edgepipe.targets.onnxruntime import OrtQuantPreset, OrtRunner

ENGINE_SCRIPT = Path(__file__).with_name("trt_engine.py")
PROXY_LABEL = "TensorRT Q/DQ graph run on ONNX Runtime CPU (proxy: TensorRT's kernels differ)"

BUILD_SH = """#!/bin/sh
# Build the TensorRT engine for this device (run on the Jetson; needs TensorRT + cuda-python).
set -e
cd "$(dirname "$0")"
{command}
"""


def _fp16_onnx(src: Path, dst: Path) -> None:
    """fp16 weights and compute with fp32 I/O: what TensorRT 11 needs in place of BuilderFlag.FP16."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    with atomic_output(dst) as tmp:
        onnx.save(model, str(tmp))


def _copy(src: Path, dst: Path) -> Path:
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


class _EngineRunner(Runner):
    def __init__(self, plan: Path, threads: int, name: str):
        super().__init__(name, threads)
        self.plan = plan
        self.runner = None

    def activate_impl(self) -> None:
        from edgepipe.targets.trt_engine import TrtRunner

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


class TensorRtTarget(Target):
    name = "tensorrt"
    precisions = ("fp16", "int8")

    def unavailable_reason(self) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt not installed"
        try:
            from edgepipe.targets.trt_engine import _cudart

            _cudart()
        except ImportError:
            return "cuda-python not installed (pip install cuda-python)"
        return None

    def build(self, onnx_path: Path, precision: str, calib: CalibrationSet | None, out_dir: Path, settings,
              keep_float: tuple[str, ...] = ()) -> list[Artifact]:
        files = [_copy(ENGINE_SCRIPT, out_dir / "trt_engine.py")]
        spec = calib.spec if calib is not None else None
        details: dict = {"bundle": str(out_dir), "build_command": "sh build_engine.sh"}
        if precision == "int8":
            preset = OrtQuantPreset.tensorrt(settings.calibration_method).keeping_float(keep_float)
            onnx_for_trt = out_dir / "model_qdq.onnx"
            preset.quantize(onnx_path, onnx_for_trt, calib)
            # Explicit quantization: a layer without Q/DQ runs in fp16/fp32, so the layer precision
            # of the fallback travels inside the graph; this file says which layers those are.
            with atomic_output(out_dir / "layer_precisions.json") as tmp:
                tmp.write_text(json.dumps({"int8": "every Conv/Gemm with Q/DQ inputs",
                                           "float": list(keep_float)}, indent=2))
            files += [onnx_for_trt, _copy(calib.path, out_dir / "calibration.npz"), out_dir / "layer_precisions.json"]
            details["quantization"] = preset.to_dict()
            command = "python3 trt_engine.py build --onnx model_qdq.onnx --precision int8 --out model.plan"
        else:
            onnx_for_trt = _copy(onnx_path, out_dir / "model.onnx")
            _fp16_onnx(onnx_path, out_dir / "model_fp16.onnx")
            files += [onnx_for_trt, out_dir / "model_fp16.onnx"]
            # TensorRT 11 dropped BuilderFlag.FP16: it builds the fp16-converted graph instead.
            command = ('if python3 -c "import tensorrt as t, sys; sys.exit(int(t.__version__.split(\'.\')[0]) < 11)"; '
                       "then python3 trt_engine.py build --onnx model_fp16.onnx --precision fp16 --out model.plan; "
                       "else python3 trt_engine.py build --onnx model.onnx --precision fp16 --out model.plan; fi")
        script = out_dir / "build_engine.sh"
        with atomic_output(script) as tmp:
            tmp.write_text(BUILD_SH.format(command=command))
            tmp.chmod(0o755)
        files.append(script)
        if spec is not None:
            with atomic_output(out_dir / "preprocess.json") as tmp:
                tmp.write_text(json.dumps(spec.to_dict(), indent=2))
            files.append(out_dir / "preprocess.json")

        reason = self.unavailable_reason()
        artifacts = []
        if reason is None:
            from edgepipe.targets.trt_engine import build_engine

            plan = build_engine(onnx_for_trt, out_dir / "model.plan", precision, timing_cache=out_dir / "timing.cache")
            artifacts.append(Artifact(self.name, precision, plan, files + [plan], parent="onnxruntime-fp32", details=details))
        else:
            artifacts.append(Artifact(self.name, precision, script, files, status="skipped", reason=reason, details=details))
        if precision == "int8" and reason is not None:
            artifacts.append(Artifact(self.name, precision, onnx_for_trt, [onnx_for_trt], proxy=PROXY_LABEL,
                                      parent="onnxruntime-fp32", details={"quantization": details["quantization"]}))
        return artifacts

    def load(self, artifact: Artifact, threads: int) -> Runner:
        if artifact.proxy:
            return OrtRunner(artifact.path, threads, artifact.name)
        return _EngineRunner(artifact.path, threads, artifact.name)
