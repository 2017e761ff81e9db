"""The drift reference a bundle carries (`reference.json`, schema "edgepipe-reference/1"): what the
model saw at build time, in the numbers a field unit's telemetry records per prediction.

Per split (val, test), per image: the model's top-1 confidence and margin, and the image statistics
of edgepipe.core.image_stats (luminance mean / std / p05 / p50 / p95, sharpness) of the image as the
model sees it (after the bundle's resize); the predicted-class and true-class counts; and the
training split's class priors. `edgepipe monitor` (runtime/monitor.py) compares a window of
telemetry with it. The bundle stage writes it (pipeline/drift_reference.py) and lists it in
bundle.json like every other file, so the bundle's integrity check and signature cover it.

Values are per image, in the same image order in every signal, rounded to DECIMALS (the monitor
rounds telemetry the same way before comparing, so both sides sit on one grid). numpy, pydantic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgepipe.core.errors import BundleError
from edgepipe.core.image_stats import DECIMALS, STATS, confidence_and_margin

REFERENCE_SCHEMA = "edgepipe-reference/1"
REFERENCE_FILE = "reference.json"
SIGNALS = ("confidence", "margin", *STATS)  # the continuous signals, telemetry's names
# decimals kept per signal: probabilities to 1e-6, pixel statistics (0-255) to 1e-2, sharpness to 0.1
SPLITS = ("val", "test")
REBUILD = "rebuild the bundle with this edgepipe (`edgepipe bundle CONFIG` on the build machine)"

Count = Annotated[int, Field(ge=0)]


class _Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)


class Source(_Part):
    """Which model produced the confidences: the bundle's own artifact ("measured"), the stand-in its
    build verified instead ("proxy", TensorRT int8 on ONNX Runtime) or the float ONNX model ("float":
    nothing closer could run on the build machine)."""

    how: Literal["measured", "proxy", "float"]
    row: str  # the verify row / artifact name that ran
    note: str | None = None


class SplitReference(_Part):
    images: Annotated[int, Field(ge=1)]
    predicted: dict[str, Count]  # label -> images the model predicted as it
    labels: dict[str, Count]  # label -> images that truly are it
    signals: dict[str, list[float]]  # signal -> one value per image

    @model_validator(mode="after")
    def _complete(self) -> "SplitReference":
        if missing := [s for s in SIGNALS if s not in self.signals]:
            raise ValueError(f"lacks signal(s) {', '.join(missing)}")
        if bad := [s for s, v in self.signals.items() if len(v) != self.images]:
            raise ValueError(f"signal(s) {', '.join(bad)} do not hold one value per image ({self.images})")
        if sum(self.predicted.values()) != self.images:
            raise ValueError(f"predicted counts sum to {sum(self.predicted.values())}, not {self.images}")
        return self


class DriftReference(_Part):
    schema_: Literal["edgepipe-reference/1"] = Field(alias="schema")
    labels: Annotated[list[str], Field(min_length=1)]
    source: Source
    decimals: dict[str, int]
    train_priors: dict[str, float]  # label -> share of the training split
    splits: Annotated[dict[str, SplitReference], Field(min_length=1)]

    @model_validator(mode="after")
    def _labels_match(self) -> "DriftReference":
        for name, split in self.splits.items():
            if set(split.predicted) != set(self.labels) or set(split.labels) != set(self.labels):
                raise ValueError(f"split {name!r} counts other classes than the labels")
        return self

    def values(self, signal: str) -> np.ndarray:
        """Every split's values of a signal, pooled (val and test come from the build's own distribution)."""
        return np.concatenate([np.asarray(s.signals[signal], np.float64) for s in self.splits.values()])

    def predicted_counts(self) -> np.ndarray:
        """Predicted-class counts over every split, in label order."""
        return np.array([sum(s.predicted[c] for s in self.splits.values()) for c in self.labels], np.int64)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())


def _round(values, decimals: int) -> list[float]:
    return [float(v) for v in np.round(np.asarray(values, np.float64), decimals)]


def make_reference(labels: list[str], splits: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                   train_labels: np.ndarray, source: dict) -> dict:
    """reference.json's content. splits: name -> (image_stats N x len(STATS), the model's
    probabilities N x classes, the true class index N); train_labels: the training split's class
    indices. Validated before it is returned: the build never writes what the device refuses."""
    out = {}
    for name, (stats, probabilities, truth) in splits.items():
        probabilities, truth = np.asarray(probabilities, np.float64), np.asarray(truth)
        confidence, margin = confidence_and_margin(probabilities)
        predicted = probabilities.argmax(1)
        signals = {"confidence": confidence, "margin": margin, **{s: stats[:, i] for i, s in enumerate(STATS)}}
        out[name] = {"images": int(len(predicted)),
                     "predicted": {c: int((predicted == i).sum()) for i, c in enumerate(labels)},
                     "labels": {c: int((truth == i).sum()) for i, c in enumerate(labels)},
                     "signals": {s: _round(v, DECIMALS[s]) for s, v in signals.items()}}
    train = np.asarray(train_labels)
    priors = {c: round(float((train == i).mean()), 6) if len(train) else 0.0 for i, c in enumerate(labels)}
    ref = {"schema": REFERENCE_SCHEMA, "labels": list(labels), "source": source, "decimals": dict(DECIMALS),
           "train_priors": priors, "splits": out}
    DriftReference.model_validate(ref)
    return ref


def parse_reference(text: str, where: str = REFERENCE_FILE) -> DriftReference:
    """reference.json's text as a DriftReference; BundleError (one line, with the fix) otherwise."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BundleError(f"{where} is not valid JSON ({str(e).splitlines()[0][:120]})", REBUILD) from None
    found = data.get("schema") if isinstance(data, dict) else None
    if found != REFERENCE_SCHEMA:
        raise BundleError(f"{where} has schema {found!r}, this edgepipe reads {REFERENCE_SCHEMA!r}", REBUILD)
    try:
        return DriftReference.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        raise BundleError(f"{where} is damaged: {key + ': ' if key else ''}{err['msg']}".replace("\n", " "),
                          REBUILD) from None


def load_reference(bundle) -> DriftReference:
    """The drift reference of a loaded (integrity-checked) runtime.bundle.Bundle; BundleError when
    the bundle has none (built by an edgepipe before drift monitoring) or it does not fit its labels."""
    if REFERENCE_FILE not in bundle.meta["files"]:
        raise BundleError(f"bundle {bundle.root} has no drift reference ({REFERENCE_FILE}): it was built by an "
                          "edgepipe without drift monitoring", REBUILD)
    ref = parse_reference((bundle.root / REFERENCE_FILE).read_text(), str(bundle.root / REFERENCE_FILE))
    if ref.labels != bundle.labels:
        raise BundleError(f"{bundle.root / REFERENCE_FILE} has labels {ref.labels}, the bundle {bundle.labels}",
                          REBUILD)
    return ref
