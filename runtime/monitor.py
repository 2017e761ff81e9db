"""Drift monitoring on the device (`edgepipe monitor BUNDLE TELEMETRY`): does the field still look
like what the build verified? numpy + scipy.stats; no torch, no backend (nothing is run).

The last `window` telemetry records (runtime/telemetry.py: one per prediction) are compared with the
bundle's drift reference (runtime/reference.py, the val + test splits as the build saw them):

- each continuous signal (the model's top-1 confidence and margin, and every image statistic of
  core/image_stats.py): the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) and the
  population stability index (PSI) over PSI_BINS quantile bins of the reference;
- the predicted-class mix: a chi-square test of homogeneity of the window's and the reference's
  predicted-class counts (scipy.stats.chi2_contingency) and the PSI of the two class distributions.

A signal drifts when its p-value is below ALPHA / (number of signals) (Bonferroni: an unshifted
window raises a false alarm on any signal with probability at most ALPHA) AND its PSI is at least
PSI_DRIFT (the shift is large enough to matter, not only detectable). Any drifting signal makes the
verdict "drift: retrain recommended".

The false-alarm bound holds for a window of independent predictions: consecutive frames of one scene
are near-copies and look like drift (log one frame per scene, or use a window spanning many scenes).
A class-mix-only drift may be a change in prevalence, not in the images: the table says which moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepipe.core.errors import DataError
from edgepipe.core.image_stats import STATS
from edgepipe.runtime.reference import SIGNALS, DriftReference, load_reference

WINDOW = 200  # the last this many predictions are compared
MIN_RECORDS = 30  # below this a window says nothing
ALPHA = 0.05  # family-wise false-alarm rate of an unshifted window, over every signal together
PSI_DRIFT = 0.25  # smallest PSI that counts as drift: the usual "major shift" (0.1-0.25 is "moderate")
PSI_BINS = 10  # quantile bins of the reference
PSI_EPS = 1e-4  # floor of a bin's share: an empty bin must not make the PSI infinite
CLASS_MIX = "class mix"


@dataclass(frozen=True)
class SignalResult:
    signal: str
    test: str  # "ks" (continuous) or "chi2" (class mix)
    statistic: float
    p_value: float
    psi: float
    reference: float | dict[str, float]  # the reference's median, or its predicted-class shares
    window: float | dict[str, float]  # the same of the window
    drift: bool


@dataclass(frozen=True)
class MonitorReport:
    bundle: str
    records: int  # records compared (the window)
    total_records: int  # records given
    reference_images: int
    reference_source: str
    p_threshold: float  # ALPHA / number of signals
    psi_threshold: float
    signals: list[SignalResult]

    @property
    def drifted(self) -> list[str]:
        return [s.signal for s in self.signals if s.drift]

    @property
    def drift(self) -> bool:
        return bool(self.drifted)

    @property
    def verdict(self) -> str:
        return f"drift: retrain recommended (signals: {', '.join(self.drifted)})" if self.drift else "ok"

    def to_dict(self) -> dict:
        return {**asdict(self), "alpha": ALPHA, "drift": self.drift, "drifted": self.drifted, "verdict": self.verdict}


# -- the statistics -------------------------------------------------------------------------------
def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (counts or shares)."""
    e = np.clip(np.asarray(expected, np.float64) / np.sum(expected), PSI_EPS, None)
    a = np.clip(np.asarray(actual, np.float64) / np.sum(actual), PSI_EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def binned_psi(reference: np.ndarray, window: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI over the reference's quantile bins (right-closed; tied quantiles merge into one bin)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    count = lambda x: np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)  # noqa: E731
    return psi(count(reference), count(window))


def _continuous(signal: str, reference: np.ndarray, window: np.ndarray, p_max: float) -> SignalResult:
    from scipy.stats import ks_2samp

    ks = ks_2samp(reference, window)
    value = binned_psi(reference, window)
    return SignalResult(signal, "ks", float(ks.statistic), float(ks.pvalue), value, float(np.median(reference)),
                        float(np.median(window)), bool(ks.pvalue < p_max and value >= PSI_DRIFT))


def _class_mix(labels: list[str], reference: np.ndarray, window: np.ndarray, p_max: float) -> SignalResult:
    from scipy.stats import chi2_contingency

    seen = (reference + window) > 0
    if seen.sum() < 2:  # one class only, on both sides: nothing can differ
        stat, p = 0.0, 1.0
    else:
        result = chi2_contingency(np.stack([reference[seen], window[seen]]), correction=False)
        stat, p = float(result.statistic), float(result.pvalue)
    value = psi(reference, window)
    share = lambda n: {c: round(float(v) / max(1, int(n.sum())), 4) for c, v in zip(labels, n)}  # noqa: E731
    return SignalResult(CLASS_MIX, "chi2", stat, p, value, share(reference), share(window),
                        bool(p < p_max and value >= PSI_DRIFT))


# -- the window -----------------------------------------------------------------------------------
def _bad(i: int, what: str) -> DataError:
    return DataError(f"telemetry record {i}: {what}",
                     "pass the telemetry file `edgepipe predict --telemetry` wrote (one JSON object per line)")


def _columns(records: Sequence[dict], labels: list[str], offset: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(signal -> values, predicted-class counts) of the records; DataError naming the first bad one."""
    values = {s: np.empty(len(records)) for s in SIGNALS}
    counts = np.zeros(len(labels), np.int64)
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise _bad(offset + i, f"is a JSON {type(r).__name__}, not an object")
        stats = r.get("stats")
        if not isinstance(stats, dict):
            raise _bad(offset + i, "has no image statistics (`stats`)")
        if r.get("label") not in labels:
            raise _bad(offset + i, f"predicts {r.get('label')!r}, not one of this bundle's labels "
                                   f"({', '.join(labels)})")
        counts[labels.index(r["label"])] += 1
        for s in SIGNALS:
            v = stats.get(s) if s in STATS else r.get(s)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise _bad(offset + i, f"{s} is {v!r}, not a finite number")
            values[s][i] = v
    return values, counts


def _check_window(window: int) -> None:
    if window < MIN_RECORDS:
        raise DataError(f"--window {window} is too small: a window needs at least {MIN_RECORDS} predictions",
                        f"pass --window {MIN_RECORDS} or more (default {WINDOW})")


def compare(reference: DriftReference, records: Sequence[dict], window: int = WINDOW, name: str = "") -> MonitorReport:
    """The last `window` records (all, when fewer) against the reference. DataError (exit 2) below
    MIN_RECORDS records or for a record that is not a telemetry record of these labels."""
    _check_window(window)
    if len(records) < MIN_RECORDS:
        raise DataError(f"{len(records)} telemetry record(s): the monitor needs at least {MIN_RECORDS} predictions",
                        f"let the unit predict at least {MIN_RECORDS} images with --telemetry, then rerun")
    recent = list(records[-window:])
    values, counts = _columns(recent, reference.labels, len(records) - len(recent))
    p_max = ALPHA / (len(SIGNALS) + 1)
    signals = [_continuous(s, reference.values(s), np.round(values[s], reference.decimals.get(s, 6)), p_max)
               for s in SIGNALS]
    signals.append(_class_mix(reference.labels, reference.predicted_counts(), counts, p_max))
    src = reference.source
    return MonitorReport(name, len(recent), len(records), reference.images, f"{src.how} ({src.row})", p_max,
                         PSI_DRIFT, signals)


def check_records_belong(bundle, records: Sequence[dict], offset: int = 0) -> None:
    """DataError when a record was written by another bundle: its build name ("bundle"), target or
    precision differ from bundle.json's."""
    want = {"bundle": bundle.meta["name"], "target": bundle.target, "precision": bundle.precision}
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            continue  # _columns names it
        for key, value in want.items():
            if r.get(key) != value:
                raise DataError(f"telemetry record {offset + i} is of {key} {r.get(key)!r}, not of this bundle "
                                f"({bundle.name}): its predictions cannot be compared with this reference",
                                "pass the telemetry this bundle wrote, or the bundle that wrote it; after an update "
                                "start a new telemetry file")


def monitor(bundle, records: Sequence[dict], window: int = WINDOW) -> MonitorReport:
    """Compare the last `window` telemetry records of `bundle` (a loaded runtime.bundle.Bundle, or a
    bundle folder, loaded and checked here) with its drift reference."""
    from edgepipe.runtime.bundle import Bundle, load_bundle

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(Path(bundle))
    reference = load_reference(bundle)
    _check_window(window)
    recent = records[-window:]
    check_records_belong(bundle, recent, len(records) - len(recent))
    return compare(reference, records, window, bundle.name)


# -- `edgepipe monitor` ---------------------------------------------------------------------------
def _shown(v: float | dict[str, float]) -> str:
    if isinstance(v, dict):
        return " / ".join(f"{c} {share:.0%}" for c, share in v.items())
    return f"{v:.4g}"


def print_report(report: MonitorReport) -> None:
    """The table per signal (stderr, with the console)."""
    from rich.table import Table

    from edgepipe.core.console import console

    table = Table(title=f"{report.bundle}: the last {report.records} of {report.total_records} predictions against "
                        f"the drift reference ({report.reference_images} val + test images)")
    for h in ("signal", "test", "statistic", "p-value", "PSI", "reference", "window", "verdict"):
        table.add_column(h, justify="left" if h in ("signal", "reference", "window") else "right")
    for s in report.signals:
        table.add_row(s.signal, s.test, f"{s.statistic:.3f}", f"{s.p_value:.2g}", f"{s.psi:.3f}", _shown(s.reference),
                      _shown(s.window), "[bold red]drift[/]" if s.drift else "ok")
    console.print(table)
    console.print(f"drift on a signal: p < {report.p_threshold:.2g} (Bonferroni: {ALPHA} over {len(report.signals)} "
                  f"signals) and PSI >= {report.psi_threshold}; reference confidences: {report.reference_source}")


def run_monitor(bundle_path: Path, telemetry: Path, window: int = WINDOW, as_json: bool = False,
                trust: Sequence[Path] = ()) -> MonitorReport:
    """What `edgepipe monitor` does: load (and check) the bundle, read the telemetry, compare, print the
    table (stderr) and the verdict (stdout: a line, or with as_json the report as JSON)."""
    import json

    import click

    from edgepipe.core.console import console
    from edgepipe.runtime.bundle import load_bundle
    from edgepipe.runtime.telemetry import read_telemetry, telemetry_files

    bundle = load_bundle(bundle_path, trusted_keys=list(trust) or None)
    load_reference(bundle)  # before the telemetry: an old bundle is the first thing to fix
    if not telemetry_files(telemetry):
        raise DataError(f"telemetry file {telemetry} does not exist",
                        f"pass the file the unit writes with `edgepipe predict {bundle_path} IMAGES --telemetry FILE`")
    records = read_telemetry(telemetry, include_rotated=True, last=window)  # the newest files only
    if records.skipped:
        console.print(f"[yellow]{records.skipped} line(s) of {telemetry} are not telemetry records: skipped")
    report = monitor(bundle, records, window)
    print_report(report)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.verdict)
    return report
