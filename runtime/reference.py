"""The drift reference a bundle carries (`reference.json`): what the model saw at build time, in the
numbers a field unit's telemetry records per prediction.

Per split, per image: the model's top-1 confidence and margin, and the image statistics of
edgepipe.core.image_stats (luminance mean / std / p05 / p50 / p95, sharpness) of the image as the
model sees it (after the bundle's resize); the predicted-class and true-class counts; and the
training split's class priors. `edgepipe monitor` (runtime/monitor.py) compares a window of
telemetry with it. The bundle stage writes it (pipeline/drift_reference.py) and lists it in
bundle.json like every other file, so the bundle's integrity check and signature cover it.

Schema "edgepipe-reference/1": the val and test splits, labelled. "edgepipe-reference/2" (written
only by a build adapted to field images, so other bundles stay readable by an older edgepipe) adds
the "field" split: the unlabelled images AdaBN adapted the model to, with no true-class counts.
Such a bundle was made for that field, so the monitor compares with the field split alone; val and
test stay for the record. "edgepipe-reference/3": the same splits, of a bundle adapted only part of
the way (adapt.strength < 1), which is made to serve both the training domain and the field: it has
two domains, val + test and the field, and the monitor compares a window with the one its images fit
(DriftReference.domains).

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

REFERENCE_SCHEMA = "edgepipe-reference/1"  # val + test
FIELD_SCHEMA = "edgepipe-reference/2"  # adds the unlabelled field split, the one domain monitored
BOTH_SCHEMA = "edgepipe-reference/3"  # the same splits; val + test and the field both monitored
SCHEMAS = (REFERENCE_SCHEMA, FIELD_SCHEMA, BOTH_SCHEMA)
REFERENCE_FILE = "reference.json"
SIGNALS = ("confidence", "margin", *STATS)  # the continuous signals, telemetry's names
# decimals kept per signal: probabilities to 1e-6, pixel statistics (0-255) to 1e-2, sharpness to 0.1
SPLITS = ("val", "test")
FIELD = "field"  # the unlabelled images an adapted build was adapted to
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
    labels: dict[str, Count] | None  # label -> images that truly are it; None: unlabelled (the field split)
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
    schema_: Literal["edgepipe-reference/1", "edgepipe-reference/2", "edgepipe-reference/3"] = Field(alias="schema")
    labels: Annotated[list[str], Field(min_length=1)]
    source: Source
    decimals: dict[str, int]
    train_priors: dict[str, float]  # label -> share of the training split
    splits: Annotated[dict[str, SplitReference], Field(min_length=1)]

    @model_validator(mode="after")
    def _labels_match(self) -> "DriftReference":
        for name, split in self.splits.items():
            if set(split.predicted) != set(self.labels) or (split.labels is not None
                                                             and set(split.labels) != set(self.labels)):
                raise ValueError(f"split {name!r} counts other classes than the labels")
            if (split.labels is None) != (name == FIELD):
                raise ValueError(f"split {name!r} " + ("needs true-class counts" if name != FIELD else
                                                      "holds unlabelled images: it has no true-class counts"))
        if (FIELD in self.splits) != (self.schema_ in (FIELD_SCHEMA, BOTH_SCHEMA)):
            raise ValueError(f"a {FIELD!r} split goes with schema {FIELD_SCHEMA!r} or {BOTH_SCHEMA!r} only")
        if self.schema_ == BOTH_SCHEMA and len(self.splits) < 2:
            raise ValueError(f"schema {BOTH_SCHEMA!r} needs the training domain's splits beside {FIELD!r}")
        return self

    @property
    def domains(self) -> tuple[tuple[str, ...], ...]:
        """The groups of splits a telemetry window may be compared with, each pooled: the build's own
        val + test; an adapted bundle's field images alone (the domain it was made for); a partly
        adapted bundle's both (the monitor takes the one the window's images fit)."""
        dataset = tuple(s for s in self.splits if s != FIELD)
        return {REFERENCE_SCHEMA: (dataset,), FIELD_SCHEMA: ((FIELD,),), BOTH_SCHEMA: (dataset, (FIELD,))}[self.schema_]

    def values(self, signal: str, splits: tuple[str, ...]) -> np.ndarray:
        """The splits' values of a signal, pooled."""
        return np.concatenate([np.asarray(self.splits[s].signals[signal], np.float64) for s in splits])

    def predicted_counts(self, splits: tuple[str, ...]) -> np.ndarray:
        """Predicted-class counts over the splits, in label order."""
        return np.array([sum(self.splits[s].predicted[c] for s in splits) for c in self.labels], np.int64)

    def images(self, splits: tuple[str, ...]) -> int:
        return sum(self.splits[s].images for s in splits)


def _round(values, decimals: int) -> list[float]:
    return [float(v) for v in np.round(np.asarray(values, np.float64), decimals)]


def make_reference(labels: list[str], splits: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                   train_labels: np.ndarray, source: dict, field_alone: bool = True) -> dict:
    """reference.json's content. splits: name -> (image_stats N x len(STATS), the model's
    probabilities N x classes, the true class index N, None for the unlabelled FIELD split);
    train_labels: the training split's class indices; field_alone: with a FIELD split, whether the
    bundle serves the field alone (fully adapted) or the training domain too (partly). Validated
    before it is returned: the build never writes what the device refuses."""
    out = {}
    for name, (stats, probabilities, truth) in splits.items():
        probabilities = np.asarray(probabilities, np.float64)
        confidence, margin = confidence_and_margin(probabilities)
        predicted = probabilities.argmax(1)
        signals = {"confidence": confidence, "margin": margin, **{s: stats[:, i] for i, s in enumerate(STATS)}}
        out[name] = {"images": int(len(predicted)),
                     "predicted": {c: int((predicted == i).sum()) for i, c in enumerate(labels)},
                     "labels": None if truth is None else {c: int((np.asarray(truth) == i).sum())
                                                           for i, c in enumerate(labels)},
                     "signals": {s: _round(v, DECIMALS[s]) for s, v in signals.items()}}
    train = np.asarray(train_labels)
    priors = {c: round(float((train == i).mean()), 6) if len(train) else 0.0 for i, c in enumerate(labels)}
    schema = REFERENCE_SCHEMA if FIELD not in out else FIELD_SCHEMA if field_alone else BOTH_SCHEMA
    ref = {"schema": schema, "labels": list(labels), "source": source,
           "decimals": dict(DECIMALS), "train_priors": priors, "splits": out}
    DriftReference.model_validate(ref)
    return ref


def parse_reference(text: str, where: str = REFERENCE_FILE) -> DriftReference:
    """reference.json's text as a DriftReference; BundleError (one line, with the fix) otherwise."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BundleError(f"{where} is not valid JSON ({str(e).splitlines()[0][:120]})", REBUILD) from None
    found = data.get("schema") if isinstance(data, dict) else None
    if found not in SCHEMAS:
        raise BundleError(f"{where} has schema {found!r}, this edgepipe reads {', '.join(map(repr, SCHEMAS))}",
                          REBUILD)
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
