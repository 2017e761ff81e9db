"""What every backend's config section shares: strict keys, each precision once, per-target gates.

A backend's own section (targets/<backend>/config.py) subclasses TargetSection with its `name`
literal, its precisions and its options; pipeline/config.py validates `targets:` entries with the
section of the backend each one names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    # Unknown keys are typos far more often than intent: refuse them. NaN / Inf (YAML .nan, .inf)
    # pass every `ge` / `le` bound check that compares false, so they are refused outright.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GateOverride(Section):
    """Per-target gates; a field left null uses the global `gates` value."""

    max_accuracy_drop: float | None = Field(None, ge=0, le=1)
    min_agreement: float | None = Field(None, ge=0, le=1)
    max_latency_ms: float | None = Field(None, gt=0)

    def over(self, base):
        """`base` (the global GateConfig) with this override's non-null fields in place."""
        return base.model_copy(update={k: v for k, v in self.model_dump().items() if v is not None})


CalibrationMethod = Literal["minmax", "entropy", "percentile"]


def each_once(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"each precision may appear once; got {values}")
    return values


class TargetSection(Section):
    name: str
    precisions: list[str]
    gates: GateOverride = GateOverride()

    @field_validator("precisions", check_fields=False)
    @classmethod
    def _each_precision_once(cls, precisions: list) -> list:
        return each_once(precisions)
