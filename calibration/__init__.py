"""Calibration sets: a class-balanced sample of the train split, stored once with its hash, and
adapted at the boundary to each backend (ORT reader, NNCF dataset, TensorRT calibrator).
Every source here is re-iterable: a backend may walk the data as many times as it likes."""

from edgepipe.calibration.set import CalibrationSet, create_calibration_set, load_calibration_set

__all__ = ["CalibrationSet", "create_calibration_set", "load_calibration_set"]
