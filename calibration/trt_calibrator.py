"""TensorRT adapter: an IInt8EntropyCalibrator2 (with cache file) fed from a calibration set.

Implicit INT8 calibration exists on TensorRT 8.x-10.x only (removed in 11.0); edgepipe's default
TensorRT INT8 path is the explicit Q/DQ ONNX. The calibrator class itself lives in
targets/trt_engine.py, which also runs standalone on the device from a bundle.
"""

from __future__ import annotations

from pathlib import Path

from calibration.set import CalibrationSet


def entropy_calibrator(calib: CalibrationSet, cache_path: Path, batch_size: int = 8):
    from targets.trt_engine import make_entropy_calibrator

    shape = (3, calib.spec.image_size, calib.spec.image_size)
    return make_entropy_calibrator(lambda: calib.batches(batch_size), batch_size, shape, cache_path)
