"""The `targets: - name: onnxruntime` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgepipe.targets.section import CalibrationMethod, TargetSection


class OnnxRuntimeTargetConfig(TargetSection):
    name: Literal["onnxruntime"] = "onnxruntime"
    precisions: list[Literal["fp32", "int8"]] = Field(default_factory=lambda: ["fp32", "int8"], min_length=1)
    calibration_method: CalibrationMethod = "minmax"
