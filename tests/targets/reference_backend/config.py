from typing import Literal

from pydantic import Field

from edgepipe.targets.section import TargetSection


class ReferenceTargetConfig(TargetSection):
    name: Literal["reference"] = "reference"
    precisions: list[Literal["fp32"]] = Field(default_factory=lambda: ["fp32"], min_length=1)
