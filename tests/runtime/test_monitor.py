"""`edgepipe monitor`: synthetic telemetry against a reference made from synthetic images.

The images are textured panels, half of them with a dark spot (the "defect"); a toy classifier
looks for the spot, so its confidence moves with the image as a real model's does. Records are made
by the telemetry writer itself (runtime/telemetry.py records_for), so they are the contract's."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter

from edgepipe.cli import cli
from edgepipe.core.errors import BundleError, DataError
from edgepipe.core.image_stats import image_stats
from edgepipe.runtime.bundle import MANIFEST, load_bundle, seal
from edgepipe.runtime.monitor import ALPHA, MIN_RECORDS, compare, monitor
from edgepipe.runtime.predictor import Predictor
from edgepipe.runtime.reference import DriftReference, make_reference, parse_reference
from edgepipe.runtime.telemetry import records_for
from tests.conftest import _images

LABELS = ["functional", "defective"]
META = {"name": "synthetic", "target": "onnxruntime", "precision": "int8"}
WINDOW = 200
FALSE_ALARM_WINDOWS = 100


def panels(n: int, rng: np.random.Generator, defective: float = 0.5, dark: float = 1.0, blur: float = 0.0,
           size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """n RGB uint8 panels: brightness 90-170, noise, a stripe texture, a dark spot on the defective ones."""
    y = (rng.random(n) < defective).astype(np.int64)
    yy, xx = np.mgrid[:size, :size]
    img = rng.uniform(90, 170, (n, 1, 1)) + rng.normal(0, 25, (n, size, size))
    img += 20 * np.sin(xx / rng.uniform(3, 8, (n, 1, 1)) + rng.uniform(0, 6, (n, 1, 1)))
    r, c = rng.integers(8, size - 8, (2, n, 1, 1))
    spot = ((yy - r) ** 2 + (xx - c) ** 2 < rng.uniform(16, 49, (n, 1, 1))) & (y[:, None, None] == 1)
    img -= spot * rng.uniform(40, 90, (n, 1, 1))
    if blur:
        img = gaussian_filter(img, (0, blur, blur))
    gray = np.clip(img * dark, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), y


def classify(rgb8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Toy model: P(defective) grows with how far the darkest smoothed spot lies below the median."""
    g = gaussian_filter(rgb8[..., 0].astype(np.float64), (0, 2, 2))
    depth = np.median(g.reshape(len(g), -1), axis=1) - g.min(axis=(1, 2))
    p = 1 / (1 + np.exp(-((depth - 40) / 6 + rng.normal(0, 1, len(g)))))
    return np.column_stack([1 - p, p])


def stream(n: int, seed: int, **shift) -> list[dict]:
    """n telemetry records (dicts, as read_telemetry returns them) of freshly drawn panels."""
    rng = np.random.default_rng(seed)
    rgb8, _ = panels(n, rng, **shift)
    return [r.to_dict() for r in records_for(META, LABELS, classify(rgb8, rng), rgb8, t=1.7e9)]


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    """Like ELPV's: 400 val and 600 test images."""
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in (("val", 400), ("test", 600)):
        rgb8, y = panels(n, rng)
        splits[name] = (image_stats(rgb8), classify(rgb8, rng), y)
    ref = make_reference(LABELS, splits, rng.integers(0, 2, 2000), {"how": "measured", "row": "onnxruntime-int8"})
    return parse_reference(json.dumps(ref, separators=(",", ":")))


def test_an_unshifted_window_is_ok(reference):
    report = compare(reference, stream(WINDOW, seed=1), WINDOW)
    assert not report.drift and report.verdict == "ok", [(s.signal, s.p_value, s.psi) for s in report.signals]
    assert report.records == WINDOW and report.reference_images == 1000 and len(report.signals) == 9


def test_darker_images_drift_on_the_intensity_signals(reference):
    report = compare(reference, stream(WINDOW, seed=2, dark=0.7), WINDOW)
    assert {"mean", "p05", "p50", "p95"} <= set(report.drifted)
    assert report.verdict.startswith("drift: retrain recommended (signals: ") and "mean" in report.verdict
    mean = next(s for s in report.signals if s.signal == "mean")
    assert mean.window < 0.8 * mean.reference and mean.psi >= 0.25 and mean.p_value < ALPHA / 9


def test_blurred_images_drift_on_sharpness(reference):
    report = compare(reference, stream(WINDOW, seed=3, blur=1.5), WINDOW)
    assert "sharpness" in report.drifted
    sharp = next(s for s in report.signals if s.signal == "sharpness")
    assert sharp.window < 0.5 * sharp.reference
    assert "mean" not in report.drifted and "p50" not in report.drifted  # blur keeps the brightness


def test_a_different_class_mix_drifts_on_the_class_mix(reference):
    report = compare(reference, stream(WINDOW, seed=4, defective=0.9), WINDOW)
    assert "class mix" in report.drifted
    mix = next(s for s in report.signals if s.signal == "class mix")
    assert mix.test == "chi2" and mix.window["defective"] > 0.75 and 0.35 < mix.reference["defective"] < 0.6


def test_false_alarm_rate_of_unshifted_windows_is_at_most_5_percent(reference):
    alarms = [compare(reference, stream(WINDOW, seed=1000 + k), WINDOW).drifted for k in range(FALSE_ALARM_WINDOWS)]
    rate = sum(bool(a) for a in alarms) / FALSE_ALARM_WINDOWS
    print(f"false alarms: {rate:.1%} of {FALSE_ALARM_WINDOWS} unshifted windows of {WINDOW}:",
          [a for a in alarms if a])
    assert rate <= 0.05


def test_only_the_last_window_counts(reference):
    old, new = stream(WINDOW, seed=5, dark=0.6), stream(WINDOW, seed=6)
    assert not compare(reference, old + new, WINDOW).drift
    report = compare(reference, new + old, WINDOW)
    assert report.drift and report.records == WINDOW and report.total_records == 2 * WINDOW


def test_too_few_records_or_a_foreign_label_are_refused(reference):
    with pytest.raises(DataError, match=f"needs at least {MIN_RECORDS} predictions"):
        compare(reference, stream(MIN_RECORDS - 1, seed=7), WINDOW)
    assert not compare(reference, stream(MIN_RECORDS, seed=7), WINDOW).drift  # a short window is fine
    with pytest.raises(DataError, match="--window 10 is too small"):
        compare(reference, stream(WINDOW, seed=7), 10)
    records = stream(50, seed=8)
    records[-3]["label"] = "cat"
    with pytest.raises(DataError, match="telemetry record 47: predicts 'cat'"):
        compare(reference, records, WINDOW)


def test_a_damaged_reference_is_refused_with_the_fix(reference):
    data = json.loads(json.dumps(reference.model_dump(by_alias=True)))
    data["splits"]["val"]["signals"]["mean"] = data["splits"]["val"]["signals"]["mean"][:-1]
    with pytest.raises(BundleError, match="do not hold one value per image") as e:
        parse_reference(json.dumps(data))
    assert "rebuild the bundle with this edgepipe" in str(e.value)
    with pytest.raises(BundleError, match="has schema 'edgepipe-reference/9'"):
        parse_reference(json.dumps({**data, "schema": "edgepipe-reference/9"}))


# -- on a bundle, through the command line ---------------------------------------------------------
def _telemetry(bundle, rgb8: np.ndarray, path) -> list[dict]:
    """What `predict --telemetry` records for these pixels (the bundle's own model runs)."""
    b = load_bundle(bundle)
    with Predictor(b) as p:
        probs = np.array([list(x.probabilities.values()) for x in p.predict_pixels(rgb8)])
    records = [r.to_dict() for r in records_for(b.meta, b.labels, probs, rgb8, t=1.7e9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _run(*args):
    r = CliRunner().invoke(cli, ["monitor", *map(str, args)])
    return r.exit_code, r.stdout, r.stderr


def test_cli_ok_on_the_builds_own_images_and_drift_on_darker_ones(tiny_build, tmp_path):
    bundle = tiny_build["dist"] / "onnxruntime-int8"
    rgb8, _ = _images(64, seed=2)  # the tiny build's val + test images
    _telemetry(bundle, rgb8, tmp_path / "ok.jsonl")
    code, out, err = _run(bundle, tmp_path / "ok.jsonl")
    assert (code, out) == (0, "ok\n"), err
    assert "class mix" in err and "sharpness" in err and "p-value" in err

    _telemetry(bundle, (rgb8 * 0.5).astype(np.uint8), tmp_path / "dark.jsonl")
    code, out, err = _run(bundle, tmp_path / "dark.jsonl", "--json")
    report = json.loads(out)
    assert code == 3 and report["drift"] and "mean" in report["drifted"], err
    assert report["verdict"].startswith("drift: retrain recommended (signals: ")
    assert report["records"] == 64 and report["reference_images"] == 64 and report["alpha"] == ALPHA


def test_cli_refuses_records_of_another_bundle(tiny_build, tmp_path):
    rgb8, _ = _images(64, seed=2)
    records = _telemetry(tiny_build["dist"] / "onnxruntime-fp32", rgb8, tmp_path / "fp32.jsonl")
    code, _, err = _run(tiny_build["dist"] / "onnxruntime-int8", tmp_path / "fp32.jsonl")
    assert code == 2 and "is of precision 'fp32', not of this bundle (tiny/onnxruntime-int8)" in err
    assert "pass the telemetry this bundle wrote" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "other.jsonl").write_text("".join(json.dumps({**r, "bundle": "other"}) + "\n" for r in records))
    with pytest.raises(DataError, match="is of bundle 'other'"):
        monitor(tiny_build["dist"] / "onnxruntime-fp32", [{**r, "bundle": "other"} for r in records])


def test_cli_bad_input_exits_2_in_one_line(tiny_build, bundle_copy, tmp_path):
    bundle = tiny_build["dist"] / "onnxruntime-fp32"
    records = _telemetry(bundle, _images(64, seed=2)[0], tmp_path / "t.jsonl")
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:MIN_RECORDS - 1]))
    cases = {"few": (bundle, tmp_path / "few.jsonl", f"needs at least {MIN_RECORDS} predictions"),
             "missing": (bundle, tmp_path / "none.jsonl", "does not exist")}
    old = bundle_copy("onnxruntime-fp32")  # a bundle from before drift monitoring: no reference.json
    (old / "reference.json").unlink()
    meta = json.loads((old / MANIFEST).read_text())
    del meta["files"]["reference.json"]
    (old / MANIFEST).write_text(json.dumps(seal(meta), indent=2))
    cases["old"] = (old, tmp_path / "t.jsonl", "has no drift reference (reference.json)")
    for name, (b, telemetry, fragment) in cases.items():
        code, out, err = _run(b, telemetry)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and not out, (name, err)
    assert "rebuild the bundle with this edgepipe" in _run(old, tmp_path / "t.jsonl")[2]
