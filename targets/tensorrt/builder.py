"""TensorRT builder (Jetson / NVIDIA GPUs): fp16 and int8 device bundles, the engine built on the device.

A plan is tied to its TensorRT version and GPU, so the portable product is a device bundle:
the ONNX TensorRT should parse (a Q/DQ graph by TensorRT's rules for int8, fp32 + fp16-converted
graphs for fp16), the preprocessing spec and `build_engine.sh`, which runs
the standalone trt_engine.py. Where TensorRT is importable the engine is also built and run here;
where it is not, the row is reported `skipped` and the int8 Q/DQ graph is verified on ONNX
Runtime as a labelled proxy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgepipe.calibration.set import CalibrationSet
from edgepipe.core.files import atomic_output
from edgepipe.targets.base import Artifact
from edgepipe.targets.builder import Target
from edgepipe.targets.onnxruntime.builder import OrtQuantPreset
from edgepipe.targets.tensorrt.runner import DEVICE_FILES, PROXY_LABEL, TensorRtDevice

ENGINE_SCRIPT = Path(__file__).with_name("trt_engine.py")

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


class TensorRtTarget(Target):
    name = "tensorrt"
    precisions = ("fp16", "int8")
    model_format = "onnx for TensorRT (engine built on the device)"
    bundles_unbuilt = True  # the bundle is what goes to the Jetson: it builds the engine there

    def unavailable_reason(self) -> str | None:
        try:
            TensorRtDevice().require()
        except ImportError as e:
            if e.name == "tensorrt":
                return "tensorrt not installed"
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
            # no calibration data: the Q/DQ graph carries its scales (explicit quantization)
            files += [onnx_for_trt, out_dir / "layer_precisions.json"]
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
            from edgepipe.targets.tensorrt.trt_engine import build_engine

            plan = build_engine(onnx_for_trt, out_dir / "model.plan", precision, timing_cache=out_dir / "timing.cache")
            artifacts.append(Artifact(self.name, precision, plan, files + [plan], parent="onnxruntime-fp32", details=details))
        else:
            artifacts.append(Artifact(self.name, precision, script, files, status="skipped", reason=reason, details=details))
        if precision == "int8" and reason is not None:
            artifacts.append(Artifact(self.name, precision, onnx_for_trt, [onnx_for_trt], proxy=PROXY_LABEL,
                                      parent="onnxruntime-fp32", details={"quantization": details["quantization"]}))
        return artifacts

    def bundle_files(self, artifact: Artifact) -> tuple[Path, list[Path]]:
        """A plan is tied to its GPU: never shipped. The model is the graph TensorRT parses (the Q/DQ
        graph for int8, the float graph for fp16; model_fp16.onnx rides along for TensorRT 11)."""
        files = [f for f in artifact.files if f.name not in DEVICE_FILES]
        model = {"int8": "model_qdq.onnx", "fp16": "model.onnx"}[artifact.precision]
        return next(f for f in files if f.name == model), files
