"""Two releases side by side: what `edgepipe diff` prints and what the baseline gates decide on.

Both read report.json only (no torch, no images). Two reports are comparable image by image when
their test splits hold the same images (path, bytes and label alike); otherwise only on the images
both hold, and only when the caller allows it: a difference in accuracy between two different
test sets says nothing about the models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepipe.core.errors import DataError
from edgepipe.pipeline.records import Report, checked


@dataclass(frozen=True)
class LoadedReport:
    report: dict
    path: Path
    sha256: str


def report_file(where: str | Path) -> Path:
    """The report.json meant by `where`: the file itself, or the one in a build folder."""
    path = Path(where)
    return path / "report.json" if path.is_dir() else path


def load_report(where: str | Path, role: str = "report") -> LoadedReport:
    """report.json, given as the file or as its build folder; DataError (exit 2) with the fix when
    it is missing, not JSON or not a report this edgepipe reads."""
    path = report_file(where)
    if not path.is_file():
        raise DataError(f"the {role} {where} is neither a report.json nor a build folder holding one",
                        "pass the report.json a build wrote (OUTPUT_DIR/report.json) or its output folder")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"the {role} {path} is not JSON", "pass the report.json a build wrote") from None
    return LoadedReport(checked(Report, data, str(path)), path.resolve(), hashlib.sha256(raw).hexdigest())


@dataclass
class ArtifactChange:
    name: str
    # "compared"; "new" (ran in NEW only); "removed" (ran in OLD, not in NEW at all); "broken" (ran in
    # OLD, failed or skipped in NEW); "new, not running" (in NEW only, failed or skipped there);
    # "not running" (failed or skipped in both)
    status: str
    reason: str | None = None
    old_accuracy: float | None = None
    new_accuracy: float | None = None
    old_agreement: float | None = None  # with its own report's float reference
    new_agreement: float | None = None
    recall_delta: dict[str, float | None] = field(default_factory=dict)  # per class, NEW - OLD, on the compared images
    latency_ratio: float | None = None  # p50 NEW / OLD
    size_ratio: float | None = None
    predictions_changed: int = 0
    reason_unchanged: bool = False  # "not running": for the same reason in both

    @property
    def accuracy_delta(self) -> float | None:
        if self.old_accuracy is None or self.new_accuracy is None:
            return None
        return self.new_accuracy - self.old_accuracy


@dataclass
class ImageChange:
    id: str
    label: str
    artifact: str
    old: str  # class predicted by OLD
    new: str
    old_confidence: float | None
    new_confidence: float | None

    @property
    def effect(self) -> str:
        if self.new == self.label:
            return "fixed"
        return "broke" if self.old == self.label else "changed"


@dataclass
class Comparison:
    old: str  # each report's build name and created time, for the headings
    new: str
    split: str  # "same" or "common"
    compared_images: int
    only_old: int
    only_new: int
    same_machine: bool
    artifacts: list[ArtifactChange]
    images: list[ImageChange]

    @property
    def compared_on(self) -> str:
        if self.split == "same":
            return f"the same test split ({self.compared_images} images)"
        return (f"the {self.compared_images} images common to both test splits ({self.only_old} only in the "
                f"old one, {self.only_new} only in the new one)")

    def unchanged(self) -> bool:
        """Nothing a reviewer must look at: the same artifacts, accuracies and predictions (latency
        and size are measurements, shown but not counted: two runs never time alike)."""
        return not self.images and all(
            (a.status == "compared" and a.accuracy_delta == 0 and a.old_agreement == a.new_agreement)
            or (a.status == "not running" and a.reason_unchanged) for a in self.artifacts)

    def to_json(self) -> dict:
        return {"old": self.old, "new": self.new, "split": self.split, "compared_on": self.compared_on,
                "compared_images": self.compared_images, "same_machine": self.same_machine,
                "unchanged": self.unchanged(),
                "artifacts": [asdict(a) | {"accuracy_delta": a.accuracy_delta} for a in self.artifacts],
                "images": [asdict(i) | {"effect": i.effect} for i in self.images]}


def _keys(report: dict) -> list[tuple[str, str]] | None:
    ts = report.get("test_set")
    return None if ts is None else [(t["id"], t["sha256"]) for t in ts]


def _label_of(report: dict) -> dict[tuple[str, str], str]:
    return {(t["id"], t["sha256"]): t["label"] for t in report["test_set"]}


def compare(old: dict, new: dict, allow_common: bool = False, where: tuple[str, str] = ("OLD", "NEW")) -> Comparison:
    """OLD against NEW, artifact by artifact (matched by name) and image by image. DataError
    (exit 2) when they cannot be compared image by image: a report without its test split, no
    image in common, or different splits and allow_common False."""
    ko, kn = _keys(old), _keys(new)
    for keys, w in ((ko, where[0]), (kn, where[1])):
        if keys is None:
            raise DataError(f"{w} records no test split (written by an edgepipe before report.json kept one)",
                            f"rebuild {w} with this edgepipe (`edgepipe report CONFIG` is enough if its verify ran "
                            "with this version; otherwise `edgepipe build CONFIG --force verify`)")
    lo, ln = _label_of(old), _label_of(new)
    common = [k for k in ko if k in ln]
    relabelled = [k for k in common if lo[k] != ln[k]]
    if relabelled:
        raise DataError(f"{len(relabelled)} test image(s) carry different labels in {where[0]} and {where[1]}, e.g. "
                        f"{relabelled[0][0]} ('{lo[relabelled[0]]}' vs '{ln[relabelled[0]]}')",
                        "compare builds of the same labelled dataset")
    same = len(ko) == len(kn) and set(ko) == set(kn)  # the same images, whatever their order
    if not same and not allow_common:
        raise DataError(f"the test splits differ: {len(common)} image(s) in common, {len(ko) - len(common)} only in "
                        f"{where[0]}, {len(kn) - len(common)} only in {where[1]} (another dataset, seed or split)",
                        "build both with the same dataset, seed and dataset.split, or pass --common to compare "
                        "on the images both test splits hold")
    if not common:
        raise DataError(f"{where[0]} and {where[1]} share no test image", "compare two builds of the same dataset")
    io, inew = {k: i for i, k in enumerate(ko)}, {k: i for i, k in enumerate(kn)}
    sel_old, sel_new = np.array([io[k] for k in common]), np.array([inew[k] for k in common])
    truth = [lo[k] for k in common]
    rows_old = {r["name"]: r for r in old["rows"]}
    rows_new = {r["name"]: r for r in new["rows"]}
    same_machine = old["machine"]["cpu"] == new["machine"]["cpu"] and old["machine"]["threads"] == new["machine"]["threads"]
    artifacts, images = [], []
    for name in list(rows_old) + [n for n in rows_new if n not in rows_old]:
        ro, rn = rows_old.get(name), rows_new.get(name)
        ok_old, ok_new = ro is not None and ro["status"] == "ok", rn is not None and rn["status"] == "ok"
        if not ok_old and not ok_new:
            if rn is None:
                continue  # gone, and it did not run before either: nothing to compare
            status = "new, not running" if ro is None else "not running"
            artifacts.append(ArtifactChange(name, status, reason=f"{rn['status']}: {rn['reason']}",
                                            reason_unchanged=ro is not None and ro["reason"] == rn["reason"]))
            continue
        if not ok_old:
            artifacts.append(ArtifactChange(name, "new", reason=None if ro is None else f"{ro['status']}: {ro['reason']}"))
            continue
        if not ok_new:
            artifacts.append(ArtifactChange(name, "removed" if rn is None else "broken",
                                            reason=None if rn is None else f"{rn['status']}: {rn['reason']}"))
            continue
        change, changed = _artifact(name, ro, rn, old, new, sel_old, sel_new, truth, same)
        change.latency_ratio = _ratio(rn.get("latency_ms"), ro.get("latency_ms"))
        change.size_ratio = rn["size_bytes"] / ro["size_bytes"] if ro["size_bytes"] else None
        artifacts.append(change)
        images += changed
    return Comparison(_title(old), _title(new), "same" if same else "common", len(common), len(ko) - len(common),
                      len(kn) - len(common), same_machine, artifacts, images)


def _ratio(new: dict | None, old: dict | None) -> float | None:
    if not new or not old or not old["p50"]:
        return None
    return new["p50"] / old["p50"]


def _title(report: dict) -> str:
    return f"{report['name']} ({report['created']})"


def _artifact(name, ro, rn, old, new, sel_old, sel_new, truth, same) -> tuple[ArtifactChange, list[ImageChange]]:
    classes_old, classes_new = _classes(old), _classes(new)
    po, pn = ro.get("predictions"), rn.get("predictions")
    change = ArtifactChange(name, "compared")
    if same or po is None or pn is None:
        change.old_accuracy, change.new_accuracy = ro["accuracy"], rn["accuracy"]
        change.old_agreement, change.new_agreement = ro["agreement"], rn["agreement"]
        if same:
            change.recall_delta = {c: None if r is None or rn["per_class_recall"].get(c) is None
                                   else rn["per_class_recall"][c] - r for c, r in ro["per_class_recall"].items()}
    if po is None or pn is None:  # no per-image record: the rows' own figures (same split only)
        if not same:
            change.old_accuracy = change.new_accuracy = None
            change.reason = "no per-image predictions recorded: not comparable on the common images"
        return change, []
    co = [classes_old[i] for i in np.asarray(po)[sel_old]]
    cn = [classes_new[i] for i in np.asarray(pn)[sel_new]]
    if not same:  # recompute on the common images
        change.old_accuracy = float(np.mean([a == t for a, t in zip(co, truth)]))
        change.new_accuracy = float(np.mean([a == t for a, t in zip(cn, truth)]))
        change.old_agreement = _agreement(old, po, sel_old)
        change.new_agreement = _agreement(new, pn, sel_new)
        change.recall_delta = {c: _recall(cn, truth, c) - _recall(co, truth, c) if c in truth else None
                               for c in classes_old}
    conf_o, conf_n = ro.get("confidence") or [], rn.get("confidence") or []
    ids = [t["id"] for t in old["test_set"]]
    changed = [ImageChange(ids[i], truth[j], name, co[j], cn[j], conf_o[i] if conf_o else None,
                           conf_n[k] if conf_n else None)
               for j, (i, k) in enumerate(zip(sel_old, sel_new)) if co[j] != cn[j]]
    change.predictions_changed = len(changed)
    return change, changed


def _recall(pred: list[str], truth: list[str], c: str) -> float:
    hits = [p == t for p, t in zip(pred, truth) if t == c]
    return sum(hits) / len(hits)


def _classes(report: dict) -> list[str]:
    """The classes in their index order: verify writes per_class_recall in that order and JSON
    keeps it. Predictions are compared by class name, so two builds may order classes differently."""
    ref = next(r for r in report["rows"] if r["name"] == report["reference"])
    return list(ref["per_class_recall"])


def _agreement(report: dict, pred: list[int], sel: np.ndarray) -> float | None:
    ref = next(r for r in report["rows"] if r["name"] == report["reference"])
    if ref.get("predictions") is None:
        return None
    return float((np.asarray(pred)[sel] == np.asarray(ref["predictions"])[sel]).mean())
