"""NNCF adapter: `nncf.Dataset` iterates its source anew on every pass, so hand it the set itself."""

from __future__ import annotations

from edgepipe.calibration.set import CalibrationSet


def nncf_dataset(calib: CalibrationSet):
    import nncf

    return nncf.Dataset(calib)  # items are already the model's normalized NCHW input
