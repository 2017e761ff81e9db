"""ONNX Runtime on the device: the one session helper, the runner, what a field unit installs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.targets.base import Artifact, Device, Runner


def session(model: bytes | Path, threads: int, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """The one way edgepipe opens an ONNX Runtime session (a file or in-memory model bytes):
    `threads` intra-op threads, one inter-op, sequential, every graph optimization, quiet log."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=list(providers))


def cpu_session(model: bytes, threads: int):
    """A session on in-memory model bytes: for the build's own probes of a graph (layer ranking,
    weight rounding), not for the timed runner."""
    return session(model, threads)


class OrtRunner(Runner):
    def __init__(self, path: Path, threads: int, name: str = "onnxruntime", providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        super().__init__(name, threads)
        self.path, self.providers = path, providers
        self.session = None

    def activate_impl(self) -> None:
        self.session = session(self.path, self.threads, self.providers)
        self._input = self.session.get_inputs()[0]

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input.name: x})[0]

    def deactivate_impl(self) -> None:
        self.session = None

    @property
    def max_batch(self) -> int | None:
        dim = self._input.shape[0] if self.session else None
        return dim if isinstance(dim, int) else None

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        return tuple(d if isinstance(d, int) else None for d in self._input.shape) if self.session else None

    @property
    def input_name(self) -> str | None:
        return self._input.name if self.session else None


class OnnxRuntimeDevice(Device):
    package = "onnxruntime"
    install = "pip install onnxruntime"

    def runner(self, artifact: Artifact, threads: int) -> Runner:
        return OrtRunner(artifact.path, threads, artifact.name)
