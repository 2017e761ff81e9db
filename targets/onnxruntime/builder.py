"""ONNX Runtime builder: fp32 (the exported graph) and int8 (static QDQ quantization with calibration).

The quantization preset is Optimum-style: `OrtQuantPreset.cpu()` for ORT's own CPU kernels,
`OrtQuantPreset.tensorrt()` for the Q/DQ rules TensorRT imposes (used by targets/tensorrt/builder.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgepipe.calibration.set import CalibrationSet
from edgepipe.core.files import atomic_output
from edgepipe.targets.base import Artifact, BackendUnavailable
from edgepipe.targets.builder import Target


@dataclass(frozen=True)
class OrtQuantPreset:
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True  # per-tensor weights collapse depthwise-conv nets (EfficientNet: 87 % -> 38 %)
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    symmetric_activations: bool = False
    qdq_on_weights: bool = False  # keep fp32 weights behind a Q/DQ pair instead of folding them to int8
    dedicated_qdq_pair: bool = False
    quantize_bias: bool = True  # int32 bias behind a DequantizeLinear
    nodes_to_exclude: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def cpu(cls, calibration_method: str = "minmax") -> "OrtQuantPreset":
        return cls(calibration_method=calibration_method)

    @classmethod
    def tensorrt(cls, calibration_method: str = "minmax") -> "OrtQuantPreset":
        # TensorRT accepts only symmetric int8 (zero point 0), per-channel scales on weights only, and
        # float bias (it fuses bias itself; an int32 DequantizeLinear is not an int8 Q/DQ pair).
        return cls(calibration_method=calibration_method, activation_type="QInt8", symmetric_activations=True,
                   qdq_on_weights=True, dedicated_qdq_pair=True, quantize_bias=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def keeping_float(self, nodes: tuple[str, ...]) -> "OrtQuantPreset":
        return replace(self, nodes_to_exclude=tuple(nodes))

    def _ranges_cache(self, onnx_in: Path, calib: CalibrationSet) -> Path:
        """Calibrated tensor ranges, reused by fallback rebuilds of the same graph and data."""
        graph = hashlib.sha256(onnx_in.read_bytes()).hexdigest()[:12]
        sym = "sym" if self.symmetric_activations else "asym"
        return calib.path.with_name(f"ort-ranges-{graph}-{calib.sha256[:12]}-{self.calibration_method}-{sym}.json")

    def quantize(self, onnx_in: Path, onnx_out: Path, calib: CalibrationSet) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from edgepipe.calibration.ort_reader import OrtCalibrationReader

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[self.calibration_method]
        cache = self._ranges_cache(onnx_in, calib)
        if cache.is_file() and not _readable_json(cache):
            cache.unlink()  # e.g. written by an older edgepipe that was killed mid-write
        with tempfile.TemporaryDirectory() as tmp:
            # ORT writes a new cache in place, not atomically: let it write in tmp, then rename it in.
            cache_arg = cache if cache.is_file() else Path(tmp) / "ranges.json"
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(onnx_in), str(prepared), skip_symbolic_shape=True)
            input_name = _input_name(prepared)
            # ORT's histogram calibrators stack per-batch outputs and fail on a short last batch.
            batch = 16 if self.calibration_method == "minmax" else 1
            reader = OrtCalibrationReader(calib, input_name, batch_size=batch)
            chunking = {}
            if self.calibration_method != "minmax":
                # They also hold every activation of every image until the end (300 ELPV images at
                # 224 px: over 20 GB, killed by the OOM killer). In chunks, ORT merges the histograms
                # as it goes ("CalibStridedMinMax" is its chunking for every calibrator, whatever
                # the name says); the chunk must divide the set.
                chunking = {"CalibStridedMinMax": calibration_chunk(len(reader))}
            with atomic_output(onnx_out) as out:
                quantize_static(
                    str(prepared), str(out), reader,
                    quant_format=QuantFormat.QDQ, per_channel=self.per_channel,
                    activation_type=getattr(QuantType, self.activation_type),
                    weight_type=getattr(QuantType, self.weight_type),
                    nodes_to_exclude=list(self.nodes_to_exclude), calibrate_method=method,
                    extra_options={"ActivationSymmetric": self.symmetric_activations, "WeightSymmetric": True,
                                   "AddQDQPairToWeight": self.qdq_on_weights,
                                   "DedicatedQDQPair": self.dedicated_qdq_pair,
                                   "QuantizeBias": self.quantize_bias, **chunking},
                    calibration_cache_path=str(cache_arg),
                )
            if cache_arg != cache and cache_arg.is_file():
                with atomic_output(cache) as tmp_cache:
                    shutil.copyfile(cache_arg, tmp_cache)


def calibration_chunk(n: int, most: int = 16) -> int:
    """The largest chunk of at most `most` images that divides n (ORT's condition)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    precisions = ("fp32", "int8")

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime not installed"
        return None

    def build(self, onnx_path: Path, precision: str, calib: CalibrationSet | None, out_dir: Path, settings,
              keep_float: tuple[str, ...] = ()) -> list[Artifact]:
        if reason := self.unavailable_reason():
            raise BackendUnavailable(reason)
        path = out_dir / "model.onnx"
        if precision == "fp32":
            with atomic_output(path) as tmp:
                shutil.copyfile(onnx_path, tmp)
            return [Artifact(self.name, precision, path, [path])]
        preset = OrtQuantPreset.cpu(settings.calibration_method).keeping_float(keep_float)
        preset.quantize(onnx_path, path, calib)
        return [Artifact(self.name, precision, path, [path], parent=f"{self.name}-fp32",
                         details={"quantization": preset.to_dict(), "calibration_images": len(calib)})]
