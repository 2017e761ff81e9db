import shutil
from pathlib import Path

from edgepipe.core.files import atomic_output
from edgepipe.targets.base import Artifact
from edgepipe.targets.builder import Target


class ReferenceTarget(Target):
    name = "reference"
    precisions = ("fp32",)
    model_format = "onnx (numpy reference evaluator)"

    def unavailable_reason(self) -> str | None:
        return None

    def build(self, onnx_path: Path, precision: str, calib, out_dir: Path, settings, keep_float=()) -> list[Artifact]:
        path = out_dir / "reference.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            shutil.copyfile(onnx_path, tmp)
        return [Artifact(self.name, precision, path, [path], parent="onnxruntime-fp32",
                         details={"evaluator": "onnx.reference"})]
