"""ONNX Runtime adapter: the `CalibrationDataReader` protocol over a re-iterable calibration set."""

from __future__ import annotations

import itertools

from onnxruntime.quantization import CalibrationDataReader

from edgepipe.calibration.set import CalibrationSet


class OrtCalibrationReader(CalibrationDataReader):
    """get_next() walks the set once; rewind() starts again (ORT's readers are otherwise one-shot).
    set_range() narrows it to a range of batches: ORT then calibrates chunk by chunk."""

    def __init__(self, calib: CalibrationSet, input_name: str, batch_size: int = 1):
        self.calib, self.input_name, self.batch_size = calib, input_name, batch_size
        self.rewind()

    def get_next(self) -> dict | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = self.calib.batches(self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = itertools.islice(self.calib.batches(self.batch_size), start_index, end_index)

    def __len__(self) -> int:
        return -(-len(self.calib) // self.batch_size)
