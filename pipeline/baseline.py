"""Baseline gates: no artifact worse than the previous release's same artifact (`gates.baseline`
in the config, or `edgepipe build --baseline PREVIOUS`).

They compare this build's report with the baseline's image by image (pipeline/compare.py), on
the images both test splits hold, and go to report.json, the HTML, JUnit and the exit code like
every other gate.
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.core.errors import ConfigError, DataError
from edgepipe.pipeline.compare import LoadedReport, compare, load_report, report_file
from edgepipe.pipeline.config import BaselineConfig, BuildConfig


def with_baseline(cfg: BuildConfig, previous: str | Path) -> BuildConfig:
    """cfg with `--baseline PREVIOUS` in place of gates.baseline.report (its limits kept)."""
    current = cfg.gates.baseline
    limits = {} if current is None else current.model_dump(exclude={"report"})
    baseline = BaselineConfig(report=Path(previous).resolve(), **limits)
    return cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"baseline": baseline})})


def load_baseline(cfg: BuildConfig) -> LoadedReport | None:
    """The baseline's report, checked before any stage runs: a missing or foreign file, or one without
    per-image predictions, stops the build at once (exit 2), not after the fine-tune. Whether its
    test split overlaps this build's is known only once the data is split: the report stage's gates
    say so (min_common)."""
    if cfg.gates.baseline is None:
        return None
    where = cfg.gates.baseline.report
    target = report_file(where)
    if target.resolve().is_relative_to(cfg.output_dir.resolve()):
        raise ConfigError(f"the baseline {where} is this build's own output: the report stage rewrites it",
                          f"copy the previous release's report.json outside {cfg.output_dir} (e.g. "
                          "releases/v1/report.json) and pass that")
    loaded = load_report(where, "baseline")
    rows = [r for r in loaded.report["rows"] if r["status"] == "ok"]
    if loaded.report.get("test_set") is None or any(r.get("predictions") is None for r in rows):
        raise ConfigError(f"the baseline {loaded.path} records no per-image predictions (written by an edgepipe "
                          "before they were kept): it cannot be compared image by image",
                          "rebuild the previous release with this edgepipe (`edgepipe build CONFIG --force verify`) "
                          "and pass its new report.json")
    return loaded


def domain_report(report: dict, domain: str) -> dict | None:
    """`report` on one domain's test images ("dataset" or "field"), each row's accuracy, agreement and
    per-class recall recomputed on them; the report itself when every image is of that domain, None
    when none is."""
    ts = report.get("test_set") or []
    keep = [i for i, t in enumerate(ts) if t.get("domain", "dataset") == domain]
    if len(keep) == len(ts):
        return report
    if not keep:
        return None
    ref = next(r for r in report["rows"] if r["name"] == report["reference"])
    ref_pred = None if ref.get("predictions") is None else [ref["predictions"][i] for i in keep]
    labels = [ts[i]["label"] for i in keep]
    rows = []
    for r in report["rows"]:
        if r["status"] != "ok" or r.get("predictions") is None:
            rows.append(r)
            continue
        pred = [r["predictions"][i] for i in keep]
        conf = r.get("confidence")
        rows.append(r | _scores(pred, labels, list(r["per_class_recall"]), ref_pred)
                    | {"confidence": None if conf is None else [conf[i] for i in keep]})
    return report | {"test_set": [ts[i] for i in keep], "test_images": len(keep), "rows": rows}


def _scores(pred: list[int], labels: list[str], classes: list[str], ref_pred: list[int] | None) -> dict:
    names = [classes[p] for p in pred]
    recall = {}
    for c in classes:
        hits = [n == t for n, t in zip(names, labels) if t == c]
        recall[c] = sum(hits) / len(hits) if hits else None
    return {"predictions": pred, "accuracy": sum(n == t for n, t in zip(names, labels)) / len(labels),
            "agreement": None if ref_pred is None else sum(a == b for a, b in zip(pred, ref_pred)) / len(pred),
            "per_class_recall": recall}


def previous_on_field(baseline: dict, field: dict) -> tuple[dict, dict[str, str]]:
    """The baseline report as if its test split were the field test images: its rows' predictions
    replaced by those the previous stage measured. Also the reason for each artifact that could not
    run here (e.g. a TensorRT engine on a CPU build machine)."""
    measured = {r["name"]: r for r in field["rows"]}
    labels = [t["label"] for t in field["test_set"]]
    ref = measured.get(baseline["reference"], {})
    ref_pred = ref.get("predictions") if ref.get("status") == "ok" else None
    rows, not_run = [], {}
    for r in baseline["rows"]:
        m = measured.get(r["name"])
        if r["status"] != "ok":
            rows.append(r)
        elif m is None or m["status"] != "ok":
            not_run[r["name"]] = "not run on the field images" if m is None else m["reason"]
            rows.append(r | {"status": "failed", "reason": not_run[r["name"]], "predictions": None})
        else:
            rows.append(r | _scores(m["predictions"], labels, field["classes"], ref_pred)
                        | {"confidence": m["confidence"]})
    return baseline | {"test_set": field["test_set"], "test_images": len(labels), "rows": rows}, not_run


def retimed(baseline: dict, field: dict) -> dict:
    """The baseline report with the latencies the previous stage measured in this run, side by side
    with this build's (an artifact it could not run here keeps no latency: its gate cannot pass on a
    number from another day). A field file from before re-timing leaves the report as it was."""
    if "machine" not in field:
        return baseline
    measured = {r["name"]: r for r in field["rows"]}
    rows = [r | {"latency_ms": measured.get(r["name"], {}).get("latency_ms")} if r["status"] == "ok" else r
            for r in baseline["rows"]]
    return baseline | {"machine": field["machine"], "rows": rows}


def baseline_gates(report: dict, baseline: LoadedReport, bcfg: BaselineConfig, field: dict | None = None,
                   min_field_gain: float = 0.0) -> tuple[list[dict], dict]:
    """(gates, the report's `baseline` entry). DataError when the two cannot be compared at all.

    On the dataset's test images: no artifact worse than the baseline's by more than the limit.
    With `field` (the previous stage's predictions, an update): on the field test images too, each
    artifact at least min_field_gain better than the previous release's."""
    gates = []

    def gate(artifact, kind, status, limit=None, value=None, reason=None):
        gates.append({"artifact": artifact, "gate": kind, "status": status, "limit": limit, "value": value,
                      "reason": reason})

    entry = {"report": str(baseline.path), "sha256": baseline.sha256, "name": baseline.report["name"],
             "created": baseline.report["created"]}
    mine = domain_report(report, "dataset")
    if mine is None:
        raise DataError("this build's test split holds no dataset image, only field images: there is nothing to "
                        "compare with the baseline's test split", "keep the previous release's dataset in the config")
    theirs = baseline.report if field is None else retimed(baseline.report, field)
    c = compare(theirs, mine, allow_common=True, where=(f"the baseline {baseline.path}", "this build"))
    entry["compared_on"] = c.compared_on
    if theirs is not baseline.report:
        entry["latency_from"] = "the previous release re-timed in this build's previous stage"
    share = c.compared_images / len(mine["test_set"])
    if share < bcfg.min_common:
        for a in c.artifacts:
            if a.status in ("compared", "broken", "removed"):
                gate(a.name, "baseline_accuracy_drop", "failed", bcfg.min_common, share,
                     f"only {c.compared_images} of this build's {len(mine['test_set'])} "
                     f"{'dataset ' if mine is not report else ''}test images are in the baseline's test split ({share:.0%}, limit {bcfg.min_common:.0%}): another dataset or seed")
    else:
        for a in c.artifacts:
            if _not_comparable(gate, a, "baseline_accuracy_drop"):
                continue
            drop, limit = -a.accuracy_delta, bcfg.max_accuracy_drop
            ok = drop <= limit + 1e-12
            gate(a.name, "baseline_accuracy_drop", "passed" if ok else "failed", limit, drop,
                 None if ok else f"accuracy {a.accuracy_delta * 100:+.2f} pt vs the baseline on {c.compared_on} "
                                 f"(limit -{limit * 100:.2f} pt)")
            if bcfg.max_latency_increase is not None:
                _latency_gate(gate, a, c.same_machine, bcfg.max_latency_increase, theirs["machine"]["cpu"])
    if field is not None:
        entry["field_compared_on"] = _field_gates(gate, report, baseline.report, field, min_field_gain)
    return gates, entry


def _not_comparable(gate, a, kind: str) -> bool:
    """Gate an artifact that has no accuracy on both sides (skipped or failed, with the reason)."""
    if a.status in ("new", "new, not running"):
        gate(a.name, kind, "skipped", reason="not in the baseline")
    elif a.status == "not running":
        gate(a.name, kind, "skipped", reason="did not run in the baseline either")
    elif a.status == "removed":  # a renamed artifact would otherwise escape its baseline
        gate(a.name, kind, "failed", reason="ran in the baseline, not built by this config (renamed, or its target removed)")
    elif a.status == "broken":
        gate(a.name, kind, "failed", reason=f"ran in the baseline; now {a.reason}")
    elif a.accuracy_delta is None:
        gate(a.name, kind, "failed", reason=f"cannot compare with the baseline: {a.reason}")
    else:
        return False
    return True


def _field_gates(gate, report: dict, baseline: dict, field: dict, min_gain: float) -> str:
    mine = domain_report(report, "field")
    if mine is None:
        raise DataError("the previous stage measured field test images this build's test split does not hold",
                        "rerun `edgepipe build` (the previous stage reruns with the current split)")
    theirs, not_run = previous_on_field(baseline, field)
    c = compare(theirs, mine, allow_common=False, where=("the previous release on the field images", "this build"))
    for a in c.artifacts:
        if a.name in not_run and a.status == "new":
            gate(a.name, "baseline_field_gain", "skipped",
                 reason=f"the previous release's {a.name} could not be measured on the field images: {not_run[a.name]}")
        elif not _not_comparable(gate, a, "baseline_field_gain"):
            gain = a.accuracy_delta
            ok = gain >= min_gain - 1e-12
            gate(a.name, "baseline_field_gain", "passed" if ok else "failed", min_gain, gain,
                 None if ok else f"accuracy {gain * 100:+.2f} pt vs the previous release on {c.compared_images} field "
                                 f"test images (at least {min_gain * 100:+.2f} pt asked)")
    return f"the {c.compared_images} field test images"


def _latency_gate(gate, a, same_machine: bool, limit: float, baseline_cpu: str) -> None:
    if not same_machine:
        gate(a.name, "baseline_latency_increase", "skipped", limit,
             reason=f"the baseline was timed on another machine ({baseline_cpu}) or thread count")
    elif a.latency_ratio is None:
        gate(a.name, "baseline_latency_increase", "skipped", limit,
             reason="no batch-1 latency on both sides (the baseline's could not be timed on this machine)")
    else:
        increase = a.latency_ratio - 1
        ok = increase <= limit + 1e-12
        gate(a.name, "baseline_latency_increase", "passed" if ok else "failed", limit, increase,
             None if ok else f"p50 latency x{a.latency_ratio:.2f} vs the baseline (limit x{1 + limit:.2f})")
