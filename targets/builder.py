"""The build side of every backend: a Target builds artifacts from the exported ONNX.

Heavy imports (quantizers, compilers) stay inside each backend's builder functions, so a missing
backend only skips its target. What a bundle of the artifact carries is asked of the Target too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from edgepipe.calibration.set import CalibrationSet
from edgepipe.targets.base import Artifact, Device, Runner


class Target(ABC):
    """A backend. Its quirks (presets, file formats, precisions) stay in its own module."""

    name: str
    precisions: tuple[str, ...]

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when the backend can build here; otherwise why not (shown in the report)."""

    @abstractmethod
    def build(self, onnx_path: Path, precision: str, calib: CalibrationSet | None, out_dir: Path,
              settings, keep_float: tuple[str, ...] = ()) -> list[Artifact]:
        """Write the artifact(s) for one precision under out_dir and describe them.
        keep_float: ONNX node names an int8 build must leave in float (accuracy fallback)."""

    @property
    def device(self) -> Device:
        from edgepipe.targets import get_device

        return get_device(self.name)

    def load(self, artifact: Artifact, threads: int) -> Runner:
        """A runner for an artifact this target built (not yet activated): the device's own."""
        if artifact.proxy:
            return self.device.proxy_runner(artifact, threads)
        return self.device.runner(artifact, threads)

    # -- what its bundle carries (pipeline/bundle.py) -------------------------------------------
    model_format: str = "onnx"  # bundle.json's model.format
    bundles_unbuilt = False  # True: an artifact skipped here (backend missing) still ships, to be built on the device

    def bundle_files(self, artifact: Artifact) -> tuple[Path, list[Path]]:
        """(the model file, every file the bundle holds)."""
        return artifact.path, list(artifact.files or [artifact.path])

    def io_spec(self, model: Path) -> tuple[dict, dict]:
        """Input and output {name, shape (null = dynamic), dtype} of the bundle's model file."""
        return onnx_io_spec(model)


def onnx_io_spec(model: Path) -> tuple[dict, dict]:
    import onnx

    g = onnx.load(str(model), load_external_data=False).graph

    def value(v):
        t = v.type.tensor_type
        return {"name": v.name, "shape": [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return value(g.input[0]), value(g.output[0])

