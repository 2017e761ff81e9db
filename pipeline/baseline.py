"""Baseline gates: no artifact worse than the previous release's same artifact (`gates.baseline`
in the config, or `edgepipe build --baseline PREVIOUS`).

They compare this build's report with the baseline's image by image (pipeline/compare.py), on
the images both test splits hold, and go to report.json, the HTML, JUnit and the exit code like
every other gate.
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.core.errors import ConfigError
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


def baseline_gates(report: dict, baseline: LoadedReport, bcfg: BaselineConfig) -> tuple[list[dict], dict]:
    """(gates, the report's `baseline` entry). DataError when the two cannot be compared at all."""
    c = compare(baseline.report, report, allow_common=True, where=(f"the baseline {baseline.path}", "this build"))
    gates = []

    def gate(artifact, kind, status, limit=None, value=None, reason=None):
        gates.append({"artifact": artifact, "gate": kind, "status": status, "limit": limit, "value": value,
                      "reason": reason})

    entry = {"report": str(baseline.path), "sha256": baseline.sha256, "name": baseline.report["name"],
             "created": baseline.report["created"], "compared_on": c.compared_on}
    share = c.compared_images / len(report["test_set"])
    if share < bcfg.min_common:
        for a in c.artifacts:
            if a.status in ("compared", "broken", "removed"):
                gate(a.name, "baseline_accuracy_drop", "failed", bcfg.min_common, share,
                     f"only {c.compared_images} of this build's {len(report['test_set'])} test images are in the "
                     f"baseline's test split ({share:.0%}, limit {bcfg.min_common:.0%}): another dataset or seed")
        return gates, entry
    for a in c.artifacts:
        if a.status in ("new", "new, not running"):
            gate(a.name, "baseline_accuracy_drop", "skipped", reason="not in the baseline")
        elif a.status == "not running":
            gate(a.name, "baseline_accuracy_drop", "skipped", reason="did not run in the baseline either")
        elif a.status == "removed":  # a renamed artifact would otherwise escape its baseline
            gate(a.name, "baseline_accuracy_drop", "failed",
                 reason="ran in the baseline, not built by this config (renamed, or its target removed)")
        elif a.status == "broken":
            gate(a.name, "baseline_accuracy_drop", "failed", reason=f"ran in the baseline; now {a.reason}")
        elif a.accuracy_delta is None:
            gate(a.name, "baseline_accuracy_drop", "failed", reason=f"cannot compare with the baseline: {a.reason}")
        else:
            drop, limit = -a.accuracy_delta, bcfg.max_accuracy_drop
            ok = drop <= limit + 1e-12
            gate(a.name, "baseline_accuracy_drop", "passed" if ok else "failed", limit, drop,
                 None if ok else f"accuracy {a.accuracy_delta * 100:+.2f} pt vs the baseline on {c.compared_on} "
                                 f"(limit -{limit * 100:.2f} pt)")
            if bcfg.max_latency_increase is not None:
                _latency_gate(gate, a, c.same_machine, bcfg.max_latency_increase, baseline.report["machine"]["cpu"])
    return gates, entry


def _latency_gate(gate, a, same_machine: bool, limit: float, baseline_cpu: str) -> None:
    if not same_machine:
        gate(a.name, "baseline_latency_increase", "skipped", limit,
             reason=f"the baseline was timed on another machine ({baseline_cpu}) or thread count")
    elif a.latency_ratio is not None:
        increase = a.latency_ratio - 1
        ok = increase <= limit + 1e-12
        gate(a.name, "baseline_latency_increase", "passed" if ok else "failed", limit, increase,
             None if ok else f"p50 latency x{a.latency_ratio:.2f} vs the baseline (limit x{1 + limit:.2f})")
