"""The `targets: - name: tensorrt` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgepipe.targets.section import CalibrationMethod, TargetSection


class TensorRtTargetConfig(TargetSection):
    name: Literal["tensorrt"] = "tensorrt"
    precisions: list[Literal["fp16", "int8"]] = Field(default_factory=lambda: ["fp16", "int8"], min_length=1)
    calibration_method: CalibrationMethod = "minmax"
