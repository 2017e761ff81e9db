"""Standalone TensorRT engine builder and runner (TensorRT 8.5 - 11.x).

Imports only tensorrt, numpy and cuda-python: this file is copied verbatim into every TensorRT
device bundle and run on the Jetson, where edgepipe and torch are absent:

    python3 trt_engine.py build --onnx model_qdq.onnx --precision int8 --out model.plan

Version facts it follows: EXPLICIT_BATCH is required on 8.x and gone later; BuilderFlag.FP16/INT8
exist up to 10.x and were removed in 11.x, where precision comes from the ONNX itself (Q/DQ nodes,
or an fp16-converted graph); implicit INT8 calibration was removed in 11.0. edgepipe's int8 graphs
carry their Q/DQ scales (explicit quantization, every version), so no calibrator or calibration
data is needed here: TensorRT ignores a calibrator for a Q/DQ network.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def _trt():
    import tensorrt as trt

    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _cuda(result):
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return values[0] if len(values) == 1 else (values or None)


def major_version(trt) -> int:
    return int(trt.__version__.split(".")[0])


def network_flags(trt) -> int:
    if major_version(trt) < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file + rename: a killed build never leaves a partial plan or cache under its name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_engine(onnx_path: Path, plan_path: Path, precision: str, *, max_batch: int = 8, workspace_mb: int = 1024,
                 timing_cache: Path | None = None, dla_core: int | None = None) -> Path:
    """Parse the ONNX, configure precision / batch profile, write the serialized plan."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:  # 8.2 and older
        config.max_workspace_size = workspace_mb << 20
    major = major_version(trt)
    if major < 11:  # 11.x takes precision from the graph and has no such flags
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # layers left in float may run in fp16
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # needed for Q/DQ graphs
    inp = network.get_input(0)
    if inp.shape[0] == -1:
        c, h, w = inp.shape[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, c, h, w), (1, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine; the log above says why")
    _write_atomic(Path(plan_path), bytes(plan))
    if cache is not None:
        _write_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    return Path(plan_path)


class TrtRunner:
    """Deserialize a plan and run batches with the tensor API (8.5+), timing around copies + execute."""

    def __init__(self, plan_path: Path):
        self.plan_path = Path(plan_path)
        self.runtime = self.engine = self.context = self.stream = None
        self.buffers: dict[str, tuple[int, int]] = {}
        self.input_shape: tuple[int, ...] | None = None  # NCHW, -1 for a dynamic dimension
        self.max_batch: int | None = None  # the optimization profile's largest batch

    def activate(self) -> None:
        trt, cudart = _trt(), _cudart()
        # The engine must not outlive its Runtime: keep it for as long as the engine lives.
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:  # version, GPU or platform mismatch: the logger printed which
            raise RuntimeError(f"{self.plan_path} was built for another TensorRT version or GPU: rebuild it on this device")
        self.context = self.engine.create_execution_context()
        self.stream = _cuda(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.input_shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input))
        if self.input_shape[0] == -1:  # dynamic batch: the profile build_engine set says how far
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        else:
            self.max_batch = self.input_shape[0]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            cudart = _cudart()
            if ptr:
                cudart.cudaFree(ptr)
            ptr, size = _cuda(cudart.cudaMalloc(nbytes)), nbytes
            self.buffers[name] = (ptr, size)
        return ptr

    def infer(self, x: np.ndarray) -> np.ndarray:
        cudart = _cudart()
        kind = cudart.cudaMemcpyKind
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.context.set_input_shape(self.input, x.shape):  # False: outside the optimization profile
            raise ValueError(f"input shape {x.shape} is outside the engine's optimization profile (batch 1 to "
                             f"{self.max_batch}, {tuple(self.input_shape[1:])}): split the batch or rebuild the "
                             "engine with a larger --max-batch")
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=np.float32)
        d_in, d_out = self._buffer(self.input, x.nbytes), self._buffer(self.output, out.nbytes)
        self.context.set_tensor_address(self.input, d_in)
        self.context.set_tensor_address(self.output, d_out)
        _cuda(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        _cuda(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, kind.cudaMemcpyDeviceToHost, self.stream))
        _cuda(cudart.cudaStreamSynchronize(self.stream))
        return out

    def deactivate(self) -> None:
        cudart = _cudart()
        for ptr, _ in self.buffers.values():
            cudart.cudaFree(ptr)
        self.buffers.clear()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = None  # the engine before its runtime
        self.runtime = self.stream = None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build a TensorRT engine from an edgepipe bundle on this device")
    ap.add_argument("command", choices=["build"])
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--precision", required=True, choices=["fp16", "int8"])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--timing-cache", type=Path, default=Path("timing.cache"))
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--dla-core", type=int)
    args = ap.parse_args(argv)
    try:
        build_engine(args.onnx, args.out, args.precision, max_batch=args.max_batch, timing_cache=args.timing_cache,
                     dla_core=args.dla_core)
    except ImportError as e:
        print(f"error: {e.name} is not installed: install TensorRT (JetPack) and cuda-python", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
