import numpy as np

from edgepipe.targets.base import Artifact, Device, Runner


class ReferenceRunner(Runner):
    MAX_BATCH = 4  # a declared limit, so the callers' batch splitting is exercised too

    def __init__(self, path, threads: int, name: str):
        super().__init__(name, threads)
        self.path, self.evaluator, self.calls = path, None, []

    def activate_impl(self) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(self.path))
        self._input = model.graph.input[0]
        self.evaluator = ReferenceEvaluator(model)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if len(x) > self.MAX_BATCH:
            raise AssertionError(f"batch {len(x)} over the declared max_batch {self.MAX_BATCH}")
        self.calls.append(len(x))
        return self.evaluator.run(None, {self._input.name: x})[0]

    def deactivate_impl(self) -> None:
        self.evaluator = None

    @property
    def max_batch(self) -> int | None:
        return self.MAX_BATCH

    @property
    def input_name(self) -> str | None:
        return self._input.name if self.evaluator is not None else None


class ReferenceDevice(Device):
    package = "onnx"
    install = "pip install onnx"

    def runner(self, artifact: Artifact, threads: int) -> Runner:
        return ReferenceRunner(artifact.path, threads, artifact.name)
