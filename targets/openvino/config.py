"""The `targets: - name: openvino` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgepipe.targets.section import TargetSection


class OpenVinoTargetConfig(TargetSection):
    name: Literal["openvino"] = "openvino"
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(default_factory=lambda: ["fp32", "fp16", "int8"],
                                                              min_length=1)
