"""Drift monitoring on the device (`edgepipe monitor BUNDLE TELEMETRY`): does the field still look
like what the build verified? numpy + scipy.stats; no torch, no backend (nothing is run).

The last `window` telemetry records (runtime/telemetry.py: one per prediction) are compared with the
bundle's drift reference (runtime/reference.py: the val + test splits as the build saw them, a
fully adapted bundle's field images, or, for a bundle adapted part of the way, whichever of the two
the window's image statistics fit):

- each continuous signal (the model's top-1 confidence and margin, and every image statistic of
  core/image_stats.py): the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) and the
  population stability index (PSI) over PSI_BINS quantile bins of the reference;
- the predicted-class mix: a chi-square test of homogeneity of the window's and the reference's
  predicted-class counts (scipy.stats.chi2_contingency) and the PSI of the two class distributions.

A signal drifts when its p-value is below ALPHA / (number of signals) (Bonferroni: an unshifted
window raises a false alarm on any signal with probability at most ALPHA) AND its PSI is at least
PSI_DRIFT (the shift is large enough to matter, not only detectable). Any drifting signal makes the
verdict "drift: retrain recommended".

With alternatives (`--alternative BUNDLE`: the same model built for other domains, e.g. release 1 and
its AdaBN build for a new panel type), a drifting window is also compared with each alternative's
reference on the image statistics alone (the confidences are the running model's, not theirs): the
closest one (smallest mean KS statistic) that no image statistic drifts from, and that is closer
than the running bundle's own, is recommended: "drift: switch to BUNDLE" (among equals, one of the
running bundle's target and precision). That picks each domain's batch-norm statistics at run time,
per window, without giving up the training domain's.

A reference may hold two domains (a bundle adapted part of the way serves the training images and
the field: runtime/reference.py); every signal is then compared with the one whose image statistics
the window fits (smallest mean KS statistic). A window drawn from either domain keeps the ALPHA
bound (picking the closer one only lowers its statistics); a window that mixes the two is compared
with one of them and is flagged once the other's share is large (a fifth of a window of 200 on
synthetic panels): monitor such a unit's domains as separate windows.

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
class Alternative:
    """How a window's image statistics fit another bundle's reference."""

    bundle: str  # its folder
    name: str
    reference_images: int
    fit: float  # mean KS statistic over the image statistics (0: the same distribution)
    drifted: list[str]  # the image statistics that drift from its reference

    @property
    def fits(self) -> bool:
        return not self.drifted


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
    reference_splits: list[str]  # the reference's splits the window was compared with
    image_fit: float  # the window's mean KS statistic over the image statistics against them
    alternatives: list[Alternative]  # the same against each --alternative bundle's reference

    @property
    def image_drifted(self) -> list[str]:
        """The image statistics that drift from this bundle's reference."""
        return [s for s in self.drifted if s in STATS]

    @property
    def switch_to(self) -> str | None:
        """The folder of the alternative to run instead: when the window's images moved away from
        this bundle's reference, the closest alternative that fits them, if it is closer. A drift
        of the confidences or the class mix alone (the images as before) is no reason to switch."""
        if not self.image_drifted:
            return None
        fitting = [a for a in self.alternatives if a.fits and a.fit < self.image_fit]
        return min(fitting, key=lambda a: a.fit).bundle if fitting else None

    @property
    def drifted(self) -> list[str]:
        return [s.signal for s in self.signals if s.drift]

    @property
    def drift(self) -> bool:
        return bool(self.drifted)

    @property
    def verdict(self) -> str:
        if not self.drift:
            return "ok"
        signals = f"(signals: {', '.join(self.drifted)})"
        if self.switch_to:
            return f"drift: switch to {self.switch_to}, the window's images fit its reference {signals}"
        return f"drift: retrain recommended {signals}"

    def to_dict(self) -> dict:
        alternatives = [{**asdict(a), "fits": a.fits} for a in self.alternatives]
        return {**asdict(self), "alternatives": alternatives, "alpha": ALPHA, "drift": self.drift,
                "drifted": self.drifted, "switch_to": self.switch_to, "verdict": self.verdict}


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


def _window_signal(reference: DriftReference, splits: tuple[str, ...], signal: str, values: dict[str, np.ndarray],
                   p_max: float) -> SignalResult:
    """One continuous signal of the window against the splits' values (rounded to the reference's grid)."""
    window = np.round(values[signal], reference.decimals.get(signal, 6))
    return _continuous(signal, reference.values(signal, splits), window, p_max)


def _image_fit(reference: DriftReference, values: dict[str, np.ndarray],
               p_max: float) -> tuple[tuple[str, ...], float, list[str]]:
    """(splits, mean KS statistic, drifting signals) of the window's image statistics against the
    reference's domain they fit best (the first of equals); a reference has one domain unless its
    bundle serves two (runtime/reference.py)."""
    fits = []
    for splits in reference.domains:
        results = [_window_signal(reference, splits, s, values, p_max) for s in STATS]
        fits.append((splits, round(float(np.mean([r.statistic for r in results])), 6),
                     [r.signal for r in results if r.drift]))
    return min(fits, key=lambda f: f[1])


def compare(reference: DriftReference, records: Sequence[dict], window: int = WINDOW, name: str = "",
            alternatives: Sequence[tuple[str, str, DriftReference]] = ()) -> MonitorReport:
    """The last `window` records (all, when fewer) against the reference, and their image statistics
    against each alternative (folder, name, reference). DataError (exit 2) below MIN_RECORDS records
    or for a record that is not a telemetry record of these labels."""
    _check_window(window)
    if len(records) < MIN_RECORDS:
        raise DataError(f"{len(records)} telemetry record(s): the monitor needs at least {MIN_RECORDS} predictions",
                        f"let the unit predict at least {MIN_RECORDS} images with --telemetry, then rerun")
    recent = list(records[-window:])
    values, counts = _columns(recent, reference.labels, len(records) - len(recent))
    p_max = ALPHA / (len(SIGNALS) + 1)
    splits, image_fit, _ = _image_fit(reference, values, p_max)  # the domain the window's images fit
    signals = [_window_signal(reference, splits, s, values, p_max) for s in SIGNALS]
    signals.append(_class_mix(reference.labels, reference.predicted_counts(splits), counts, p_max))
    src = reference.source
    fits = []
    for folder, alt_name, ref in alternatives:
        alt_splits, fit, drifted = _image_fit(ref, values, p_max)
        fits.append(Alternative(folder, alt_name, ref.images(alt_splits), fit, drifted))
    return MonitorReport(name, len(recent), len(records), reference.images(splits), f"{src.how} ({src.row})", p_max,
                         PSI_DRIFT, signals, list(splits), image_fit, fits)


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


def check_alternative(bundle, other) -> None:
    """DataError unless `other` (a loaded Bundle) could replace `bundle` on the unit: the same labels,
    and images resized alike (image statistics taken at another size or resize do not compare)."""
    same_images = (other.spec.image_size, other.spec.resize) == (bundle.spec.image_size, bundle.spec.resize)
    if other.labels != bundle.labels or not same_images:
        what = (f"labels {other.labels}, not {bundle.labels}" if other.labels != bundle.labels else
                f"{other.spec.image_size} px images ({other.spec.resize}), not {bundle.spec.image_size} px "
                f"({bundle.spec.resize})")
        raise DataError(f"alternative bundle {other.root} has {what}: it cannot replace {bundle.name}",
                        "pass as --alternative only builds of the same task and image size (e.g. release 1 and "
                        "its --adapt build)")


def monitor(bundle, records: Sequence[dict], window: int = WINDOW, alternatives: Sequence = ()) -> MonitorReport:
    """Compare the last `window` telemetry records of `bundle` (a loaded runtime.bundle.Bundle, or a
    bundle folder, loaded and checked here) with its drift reference; and their image statistics
    with each alternative bundle's (loaded Bundles or folders)."""
    from edgepipe.runtime.bundle import Bundle, load_bundle

    load = lambda b: b if isinstance(b, Bundle) else load_bundle(Path(b))  # noqa: E731
    bundle = load(bundle)
    reference = load_reference(bundle)
    # the running bundle's target and precision first: a build's bundles share their image statistics,
    # so among equally close alternatives the one the unit can run as it runs this one is named
    others = sorted((load(b) for b in alternatives),
                    key=lambda o: (o.target, o.precision) != (bundle.target, bundle.precision))
    for other in others:
        check_alternative(bundle, other)
    _check_window(window)
    recent = records[-window:]
    check_records_belong(bundle, recent, len(records) - len(recent))
    return compare(reference, records, window, bundle.name,
                   [(str(o.root), o.name, load_reference(o)) for o in others])


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
                        f"the drift reference ({report.reference_images} {' + '.join(report.reference_splits)} images)")
    for h in ("signal", "test", "statistic", "p-value", "PSI", "reference", "window", "verdict"):
        table.add_column(h, justify="left" if h in ("signal", "reference", "window") else "right")
    for s in report.signals:
        table.add_row(s.signal, s.test, f"{s.statistic:.3f}", f"{s.p_value:.2g}", f"{s.psi:.3f}", _shown(s.reference),
                      _shown(s.window), "[bold red]drift[/]" if s.drift else "ok")
    console.print(table)
    console.print(f"drift on a signal: p < {report.p_threshold:.2g} (Bonferroni: {ALPHA} over {len(report.signals)} "
                  f"signals) and PSI >= {report.psi_threshold}; reference confidences: {report.reference_source}")
    if report.alternatives:
        alt = Table(title="the window's image statistics against each bundle's reference (mean KS: lower is closer)")
        for h in ("bundle", "reference images", "mean KS", "image statistics that drift"):
            alt.add_column(h, justify="right" if h in ("reference images", "mean KS") else "left")
        alt.add_row(f"{report.bundle} (running)", str(report.reference_images), f"{report.image_fit:.3f}",
                    ", ".join(report.image_drifted) or "none")
        for a in report.alternatives:
            alt.add_row(a.bundle, str(a.reference_images), f"{a.fit:.3f}", ", ".join(a.drifted) or "none")
        console.print(alt)
        if report.switch_to:
            console.print(f"after switching to {report.switch_to}, start a new telemetry file: records name the "
                          "bundle that wrote them")


def _load_alternatives(bundle, folders: Sequence[Path], trust: Sequence[Path]) -> list:
    """The --alternative bundles, loaded and checked like the running one; the running bundle itself
    and repeats are left out (a unit may pass every bundle it holds). An error names the option."""
    from edgepipe.core.console import console
    from edgepipe.core.errors import EdgepipeError
    from edgepipe.runtime.bundle import load_bundle

    others, seen = [], {bundle.root.resolve()}
    for folder in folders:
        if Path(folder).resolve() in seen:
            console.print(f"[yellow]--alternative {folder}: the running bundle or one given before; left out")
            continue
        seen.add(Path(folder).resolve())
        try:
            other = load_bundle(folder, trusted_keys=list(trust) or None)
        except EdgepipeError as e:
            raise type(e)(f"--alternative {folder}: {e.problem}", e.fix) from None
        check_alternative(bundle, other)  # names the alternative itself
        try:
            load_reference(other)
        except EdgepipeError as e:
            raise type(e)(f"--alternative {folder}: {e.problem}", e.fix) from None
        others.append(other)
    return others


def run_monitor(bundle_path: Path, telemetry: Path, window: int = WINDOW, as_json: bool = False,
                trust: Sequence[Path] = (), alternatives: Sequence[Path] = ()) -> MonitorReport:
    """What `edgepipe monitor` does: load (and check) the bundle and the alternatives, read the
    telemetry, compare, print the tables (stderr) and the verdict (stdout: a line, or with as_json
    the report as JSON)."""
    import json

    import click

    from edgepipe.core.console import console
    from edgepipe.runtime.bundle import load_bundle
    from edgepipe.runtime.telemetry import read_telemetry, telemetry_files

    bundle = load_bundle(bundle_path, trusted_keys=list(trust) or None)
    load_reference(bundle)  # before the telemetry: an old bundle is the first thing to fix
    others = _load_alternatives(bundle, alternatives, trust)
    if not telemetry_files(telemetry):
        raise DataError(f"telemetry file {telemetry} does not exist",
                        f"pass the file the unit writes with `edgepipe predict {bundle_path} IMAGES --telemetry FILE`")
    records = read_telemetry(telemetry, include_rotated=True, last=window)  # the newest files only
    if records.skipped:
        console.print(f"[yellow]{records.skipped} line(s) of {telemetry} are not telemetry records: skipped")
    report = monitor(bundle, records, window, others)
    print_report(report)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.verdict)
    return report
