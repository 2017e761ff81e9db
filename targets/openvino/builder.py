"""OpenVINO builder: IR in fp32, fp16 (compressed weights) and int8 (NNCF post-training quantization).

CPU quirk: on CPUs with bf16 support OpenVINO may compute in bf16 by default, which would make
an "fp32" row something else. fp32 artifacts therefore pin INFERENCE_PRECISION_HINT to f32; the
fp16 / int8 rows let the device choose and the report records what it chose. For int8 that
means the ops left unquantized, and the layers the fallback keeps "in float", run in bf16 there:
still far finer than int8. Pinning them to f32 was measured on ELPV (the same int8 artifact of
each of three split seeds): agreement with the float model on val + test 98.89 % (bf16) vs
98.92 % (f32), one image in 3,147, at 1-5 % more p50; so the device keeps its choice.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgepipe.calibration.set import CalibrationSet
from edgepipe.core.files import TMP_MARK, atomic_output
from edgepipe.targets.base import Artifact, BackendUnavailable
from edgepipe.targets.builder import Target


@dataclass(frozen=True)
class NncfQuantPreset:
    preset: str = "performance"  # NNCF: performance = symmetric activations, mixed = asymmetric
    fast_bias_correction: bool = False  # full bias correction: val agreement 96.4 % -> 98.2 % on ELPV
    ignored_nodes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def cpu(cls) -> "NncfQuantPreset":
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)

    def keeping_float(self, onnx_nodes: tuple[str, ...]) -> "NncfQuantPreset":
        return replace(self, ignored_nodes=tuple(onnx_nodes))

    def quantize(self, ov_model, calib: CalibrationSet):
        import nncf

        from edgepipe.calibration.nncf_dataset import nncf_dataset

        return nncf.quantize(
            ov_model, nncf_dataset(calib), subset_size=len(calib),
            preset=nncf.QuantizationPreset.MIXED if self.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            fast_bias_correction=self.fast_bias_correction,
            # OpenVINO names the ops it converts from ONNX node N "N/WithoutBiases", "N/Add", ...
            ignored_scope=nncf.IgnoredScope(patterns=[f"^{re.escape(n)}(/.*)?$" for n in self.ignored_nodes])
            if self.ignored_nodes else None,
        )


def _save_ir(ov_model, xml: Path, compress_to_fp16: bool) -> list[Path]:
    import openvino as ov

    bin_ = xml.with_suffix(".bin")
    tmp_dir = xml.parent / f".{xml.stem}-ir{TMP_MARK}{os.getpid()}"  # a dead build's is swept by the next
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    ov.save_model(ov_model, str(tmp_dir / xml.name), compress_to_fp16=compress_to_fp16)
    # .bin first: an .xml present means its weights are complete
    for src, dst in ((tmp_dir / bin_.name, bin_), (tmp_dir / xml.name, xml)):
        with atomic_output(dst) as tmp:
            src.replace(tmp)
    tmp_dir.rmdir()
    return [xml, bin_]


class OpenVinoTarget(Target):
    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    model_format = "openvino-ir"

    def unavailable_reason(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino not installed (pip install openvino nncf)"
        if not _has_nncf():
            return "nncf not installed (pip install nncf)"
        return None

    def build(self, onnx_path: Path, precision: str, calib: CalibrationSet | None, out_dir: Path, settings,
              keep_float: tuple[str, ...] = ()) -> list[Artifact]:
        if reason := self.unavailable_reason():
            raise BackendUnavailable(reason)
        import openvino as ov

        model = ov.convert_model(str(onnx_path))
        xml = out_dir / "model.xml"
        if precision == "int8":
            preset = NncfQuantPreset.cpu().keeping_float(keep_float)
            files = _save_ir(preset.quantize(model, calib), xml, compress_to_fp16=False)
            return [Artifact(self.name, precision, xml, files, parent=f"{self.name}-fp32",
                             details={"quantization": preset.to_dict(), "calibration_images": len(calib)})]
        files = _save_ir(model, xml, compress_to_fp16=precision == "fp16")
        parent = None if precision == "fp32" else f"{self.name}-fp32"
        return [Artifact(self.name, precision, xml, files, parent=parent)]

    def io_spec(self, model: Path) -> tuple[dict, dict]:
        import openvino as ov

        m = ov.Core().read_model(str(model))

        def port(p):
            return {"name": p.get_any_name(), "shape": [d.get_length() if d.is_static else None
                                                        for d in p.get_partial_shape()],
                    "dtype": p.get_element_type().to_dtype().name}

        return port(m.inputs[0]), port(m.outputs[0])


def _has_nncf() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True
