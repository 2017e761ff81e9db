"""A stand-in for `tensorrt` + `cuda.bindings.runtime` that enforces the contracts of the real API
that edgepipe's engine runner relies on (TensorRT 8.5+ tensor API; ../shared/tensorrt-notes.md):

- `Runtime.deserialize_cuda_engine(bytes)` returns None for a plan it cannot load;
- an engine must not outlive the Runtime that deserialized it (here: using it afterwards raises);
- `context.set_input_shape(name, shape)` returns False, and sets nothing, for a shape outside the
  engine's optimization profile (min / opt / max from `get_tensor_profile_shape(name, 0)`);
- output shapes are known only after every input shape was set; `execute_async_v3` needs every
  tensor address set, and fails (returns False) if the input shape was rejected;
- cudaMalloc / cudaMemcpyAsync / cudaFree work on device pointers, returning (error, value) tuples.

The "network" is a fixed linear map of the input's mean per channel to `classes` logits, so a
test can compute what the engine must answer for any input.
"""

from __future__ import annotations

import gc
import json
import weakref
from enum import Enum
from types import ModuleType

import numpy as np

__version__ = "10.3.0"


class Logger:
    WARNING = 2

    def __init__(self, level=None):
        self.level = level


class TensorIOMode(Enum):
    INPUT = 1
    OUTPUT = 2


def make_plan(max_batch: int, image_size: int = 32, classes: int = 2, seed: int = 0) -> bytes:
    """A serialized "engine": its profile and weights, as the fake builder would write them."""
    w = np.random.default_rng(seed).normal(size=(3, classes)).round(3).tolist()
    return b"FAKEPLAN" + json.dumps({"max_batch": max_batch, "size": image_size, "classes": classes, "w": w}).encode()


class Runtime:
    alive = weakref.WeakSet()

    def __init__(self, logger):
        Runtime.alive.add(self)

    def deserialize_cuda_engine(self, plan: bytes):
        if not plan.startswith(b"FAKEPLAN"):
            return None  # the real API: None, and the logger says why
        return ICudaEngine(json.loads(plan[8:]), self)


class ICudaEngine:
    def __init__(self, spec: dict, runtime: Runtime):
        self.spec, self._runtime = spec, weakref.ref(runtime)
        s = spec["size"]
        self.shapes = {"input": (-1, 3, s, s), "logits": (-1, spec["classes"])}

    def _check_runtime(self):
        gc.collect()
        if self._runtime() is None:
            raise RuntimeError("fake TensorRT: the Runtime that deserialized this engine was destroyed "
                               "(the real one crashes or corrupts memory here)")

    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, i: int) -> str:
        return ("input", "logits")[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str):
        return self.shapes[name]

    def get_tensor_profile_shape(self, name: str, profile: int):
        assert name == "input" and profile == 0
        s = self.spec["size"]
        return (1, 3, s, s), (1, 3, s, s), (self.spec["max_batch"], 3, s, s)

    def create_execution_context(self):
        self._check_runtime()
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine, self.input_shape, self.addresses = engine, None, {}

    def set_input_shape(self, name: str, shape) -> bool:
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        shape = tuple(int(d) for d in shape)
        if len(shape) != 4 or any(not (a <= d <= b) for a, d, b in zip(lo, shape, hi)):
            return False
        self.input_shape = shape
        return True

    def get_tensor_shape(self, name: str):
        if name == "input":
            return self.input_shape or self.engine.shapes["input"]
        if self.input_shape is None:
            return (-1, self.engine.spec["classes"])
        return (self.input_shape[0], self.engine.spec["classes"])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream) -> bool:
        self.engine._check_runtime()
        if self.input_shape is None or set(self.addresses) != {"input", "logits"}:
            return False
        n = self.input_shape[0]
        x = DEVICE[self.addresses["input"]][: int(np.prod(self.input_shape)) * 4].view(np.float32)
        x = x.reshape(self.input_shape)
        logits = x.mean(axis=(2, 3)) @ np.asarray(self.engine.spec["w"], np.float32)
        out = DEVICE[self.addresses["logits"]]
        out[: n * self.engine.spec["classes"] * 4] = np.frombuffer(logits.astype(np.float32).tobytes(), np.uint8)
        return True


def expected_logits(plan: bytes, x: np.ndarray) -> np.ndarray:
    spec = json.loads(plan[8:])
    return x.mean(axis=(2, 3)) @ np.asarray(spec["w"], np.float32)


# --- cuda.bindings.runtime --------------------------------------------------------------------------
DEVICE: dict[int, np.ndarray] = {}  # device pointer -> its bytes
_next = [0x1000]


class cudaMemcpyKind:  # noqa: N801 (the real name)
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def cudaMalloc(nbytes: int):  # noqa: N802
    ptr = _next[0]
    _next[0] += 1 << 30
    DEVICE[ptr] = np.zeros(nbytes, np.uint8)
    return 0, ptr


def cudaFree(ptr: int):  # noqa: N802
    DEVICE.pop(ptr, None)
    return (0,)


def cudaStreamCreate():  # noqa: N802
    return 0, 7


def cudaStreamDestroy(stream):  # noqa: N802
    return (0,)


def cudaStreamSynchronize(stream):  # noqa: N802
    return (0,)


def cudaMemcpyAsync(dst: int, src: int, nbytes: int, kind: int, stream):  # noqa: N802
    import ctypes

    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        DEVICE[dst][:nbytes] = np.frombuffer((ctypes.c_uint8 * nbytes).from_address(src), np.uint8)
    else:
        ctypes.memmove(dst, DEVICE[src][:nbytes].ctypes.data, nbytes)
    return (0,)


def install(monkeypatch) -> None:
    """Make `import tensorrt` and `from cuda.bindings import runtime` find these fakes."""
    import sys

    trt = ModuleType("tensorrt")
    for name in ("__version__", "Logger", "Runtime", "TensorIOMode"):
        setattr(trt, name, globals()[name])
    cudart = ModuleType("cuda.bindings.runtime")
    for name in ("cudaMalloc", "cudaFree", "cudaStreamCreate", "cudaStreamDestroy", "cudaStreamSynchronize",
                 "cudaMemcpyAsync", "cudaMemcpyKind"):
        setattr(cudart, name, globals()[name])
    bindings = ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)

