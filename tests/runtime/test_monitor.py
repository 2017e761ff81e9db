"""`edgepipe monitor`: synthetic telemetry against a reference made from synthetic images.

The images are textured panels, half of them with a dark spot (the "defect"); a toy classifier
looks for the spot, so its confidence moves with the image as a real model's does. Records are made
by the telemetry writer itself (runtime/telemetry.py records_for), so they are the contract's."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter

from edgepipe.cli import cli
from edgepipe.core.errors import BundleError, DataError
from edgepipe.core.image_stats import image_stats
from edgepipe.runtime.bundle import MANIFEST, load_bundle, seal
from edgepipe.runtime.monitor import ALPHA, MIN_RECORDS, Alternative, compare, monitor
from edgepipe.runtime.predictor import Predictor
from edgepipe.runtime.reference import FIELD, DriftReference, make_reference, parse_reference
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


def test_false_alarm_rate_of_unshifted_windows_is_at_most_5_percent(reference, adapted_reference):
    """And with an alternative for darker images on offer, no unshifted window recommends it."""
    reports = [compare(reference, stream(WINDOW, seed=1000 + k), WINDOW, alternatives=[("dark", "x", adapted_reference)])
               for k in range(FALSE_ALARM_WINDOWS)]
    alarms = [r.drifted for r in reports]
    rate = sum(bool(a) for a in alarms) / FALSE_ALARM_WINDOWS
    print(f"false alarms: {rate:.1%} of {FALSE_ALARM_WINDOWS} unshifted windows of {WINDOW}:",
          [a for a in alarms if a])
    assert rate <= 0.05
    assert not any(r.switch_to for r in reports)


# -- an adapted bundle's field reference, and alternatives -------------------------------------------
@pytest.fixture(scope="module")
def adapted_reference() -> DriftReference:
    """An AdaBN build's, adapted to darker panels: val + test like `reference`'s, and the field split,
    500 panels at 60 % brightness (unlabelled)."""
    rng = np.random.default_rng(10)
    splits = {}
    for name, n in (("val", 400), ("test", 600)):
        rgb8, y = panels(n, rng)
        splits[name] = (image_stats(rgb8), classify(rgb8, rng), y)
    rgb8, _ = panels(500, rng, dark=0.6)
    splits[FIELD] = (image_stats(rgb8), classify(rgb8, rng), None)
    ref = make_reference(LABELS, splits, rng.integers(0, 2, 2000), {"how": "measured", "row": "onnxruntime-int8"})
    return parse_reference(json.dumps(ref, separators=(",", ":")))


def test_an_adapted_bundle_is_monitored_against_the_field_it_was_adapted_to(adapted_reference):
    assert adapted_reference.schema_ == "edgepipe-reference/2" and adapted_reference.splits[FIELD].labels is None
    assert adapted_reference.domains == ((FIELD,),) and adapted_reference.images((FIELD,)) == 500
    assert adapted_reference.values("mean", (FIELD,)).tolist() == adapted_reference.splits[FIELD].signals["mean"]
    quiet = compare(adapted_reference, stream(WINDOW, seed=20, dark=0.6), WINDOW)
    assert not quiet.drift and quiet.reference_splits == [FIELD], quiet.drifted
    back = compare(adapted_reference, stream(WINDOW, seed=21), WINDOW)  # the training domain again
    assert back.drift and {"mean", "p50"} <= set(back.drifted)


@pytest.fixture(scope="module")
def partly_adapted_reference(adapted_reference) -> DriftReference:
    """The same build adapted part of the way (adapt.strength < 1): it serves both domains."""
    data = json.loads(json.dumps(adapted_reference.model_dump(by_alias=True)))
    return parse_reference(json.dumps({**data, "schema": "edgepipe-reference/3"}))


def test_a_partly_adapted_bundle_is_quiet_on_both_domains_it_serves_and_flags_a_third(partly_adapted_reference):
    ref = partly_adapted_reference
    assert ref.domains == (("val", "test"), (FIELD,))
    # the training domain and the field each fit their own part: no drift, and the report says which
    for k in range(20):
        training = compare(ref, stream(WINDOW, seed=300 + k), WINDOW)
        field = compare(ref, stream(WINDOW, seed=400 + k, dark=0.6), WINDOW)
        assert training.reference_splits == ["val", "test"] and training.reference_images == 1000
        assert field.reference_splits == [FIELD] and field.reference_images == 500
        assert not training.drift and not field.drift, (k, training.drifted, field.drifted)
    # blurred field images fit neither part
    blurred = compare(ref, stream(WINDOW, seed=31, dark=0.6, blur=1.5), WINDOW)
    assert blurred.drift and "sharpness" in blurred.drifted
    # a window that mixes the two is compared with one of them: half and half is flagged (README says so)
    mixed = compare(ref, stream(WINDOW // 2, seed=32) + stream(WINDOW // 2, seed=33, dark=0.6), WINDOW)
    assert mixed.drift and mixed.reference_splits in (["val", "test"], [FIELD])


def test_make_reference_marks_a_field_served_alone_or_with_the_training_domain(adapted_reference):
    rng = np.random.default_rng(11)
    splits = {}
    for name, dark, labelled in (("val", 1.0, True), ("test", 1.0, True), (FIELD, 0.6, False)):
        rgb8, y = panels(40, rng, dark=dark)
        splits[name] = (image_stats(rgb8), classify(rgb8, rng), y if labelled else None)
    source = {"how": "measured", "row": "onnxruntime-int8"}
    assert make_reference(LABELS, splits, np.array([0, 1]), source)["schema"] == "edgepipe-reference/2"
    assert make_reference(LABELS, splits, np.array([0, 1]), source, field_alone=False)["schema"] == "edgepipe-reference/3"
    del splits[FIELD]
    assert make_reference(LABELS, splits, np.array([0, 1]), source, field_alone=False)["schema"] == "edgepipe-reference/1"


def test_on_drift_the_alternative_whose_reference_fits_is_recommended(reference, adapted_reference):
    report = compare(reference, stream(WINDOW, seed=22, dark=0.6), WINDOW, "release-1",
                     [("dist/adapted", "adapted", adapted_reference)])
    assert report.drift and report.switch_to == "dist/adapted"
    assert report.verdict.startswith("drift: switch to dist/adapted, the window's images fit its reference (signals: ")
    (alt,) = report.alternatives
    assert alt.fits and alt.fit < report.image_fit and alt.reference_images == 500
    assert report.to_dict()["switch_to"] == "dist/adapted" and report.to_dict()["alternatives"][0]["fits"]
    # and back: the adapted bundle running on the training domain recommends release 1
    back = compare(adapted_reference, stream(WINDOW, seed=23), WINDOW, "adapted", [("dist/release-1", "r", reference)])
    assert back.switch_to == "dist/release-1"


def test_no_switch_without_drift_or_without_an_alternative_that_fits(reference, adapted_reference):
    alternatives = [("dist/adapted", "adapted", adapted_reference)]
    ok = compare(reference, stream(WINDOW, seed=24), WINDOW, alternatives=alternatives)
    assert not ok.drift and ok.switch_to is None and ok.verdict == "ok"
    assert not ok.alternatives[0].fits  # measured all the same: the window is not the darker field
    blurred = compare(reference, stream(WINDOW, seed=25, blur=1.5), WINDOW, alternatives=alternatives)
    assert blurred.drift and blurred.switch_to is None and "sharpness" in blurred.alternatives[0].drifted
    assert blurred.verdict.startswith("drift: retrain recommended")
    # darker still than the field: the alternative is closer, yet it does not fit, so no switch
    darker = compare(reference, stream(WINDOW, seed=26, dark=0.3), WINDOW, alternatives=alternatives)
    assert darker.drift and darker.switch_to is None and darker.alternatives[0].fit < darker.image_fit


def test_the_recommended_alternative_is_the_closest_that_fits_and_closer_than_the_running_one(reference):
    report = compare(reference, stream(WINDOW, seed=27, dark=0.6), WINDOW)
    alternatives = [Alternative("far", "f", 500, 0.20, []), Alternative("near", "n", 500, 0.10, []),
                    Alternative("nearest, drifting", "d", 500, 0.05, ["sharpness"])]
    with_fit = lambda fit: replace(report, image_fit=fit, alternatives=alternatives)  # noqa: E731
    assert with_fit(0.15).switch_to == "near"
    assert with_fit(0.08).switch_to is None  # the running bundle's own reference is closer than any that fits
    assert replace(with_fit(0.15), signals=[replace(x, drift=False) for x in report.signals]).switch_to is None
    # the confidences or the class mix moved, the images did not: no reason to change statistics
    not_images = [replace(x, drift=x.signal in ("class mix", "confidence")) for x in report.signals]
    assert replace(with_fit(0.15), signals=not_images).switch_to is None
    assert replace(with_fit(0.15), signals=not_images).verdict.startswith("drift: retrain recommended")


def test_a_field_split_needs_schema_2_or_3_and_no_labels(adapted_reference):
    data = json.loads(json.dumps(adapted_reference.model_dump(by_alias=True)))
    with pytest.raises(BundleError, match="a 'field' split goes with schema 'edgepipe-reference/2' or "
                                          "'edgepipe-reference/3' only"):
        parse_reference(json.dumps({**data, "schema": "edgepipe-reference/1"}))
    field_only = {**data, "schema": "edgepipe-reference/3", "splits": {FIELD: data["splits"][FIELD]}}
    with pytest.raises(BundleError, match="needs the training domain's splits beside 'field'"):
        parse_reference(json.dumps(field_only))
    labelled = json.loads(json.dumps(data))
    labelled["splits"][FIELD]["labels"] = {"functional": 250, "defective": 250}
    with pytest.raises(BundleError, match="holds unlabelled images"):
        parse_reference(json.dumps(labelled))
    unlabelled_val = json.loads(json.dumps(data))
    unlabelled_val["splits"]["val"]["labels"] = None
    with pytest.raises(BundleError, match="split 'val' needs true-class counts"):
        parse_reference(json.dumps(unlabelled_val))


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


def _with_field(folder, rgb8: np.ndarray) -> None:
    """Turn a copied bundle into an adapted one for these field pixels: its reference.json gains the
    field split (the bundle's own model on them), and bundle.json the new file's hash."""
    from edgepipe.core.files import sha256_file

    b = load_bundle(folder)
    with Predictor(b) as p:
        probs = np.array([list(x.probabilities.values()) for x in p.predict_pixels(rgb8)])
    ref = json.loads((folder / "reference.json").read_text())
    made = make_reference(b.labels, {FIELD: (image_stats(rgb8), probs, None)}, np.array([0, 1]), ref["source"])
    ref["schema"], ref["splits"][FIELD] = made["schema"], made["splits"][FIELD]
    (folder / "reference.json").write_text(json.dumps(ref, separators=(",", ":")))
    meta = json.loads((folder / MANIFEST).read_text())
    meta["files"]["reference.json"] = {"sha256": sha256_file(folder / "reference.json"),
                                       "bytes": (folder / "reference.json").stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(seal(meta), indent=2))


def test_cli_recommends_the_alternative_bundle_the_field_fits(tiny_build, bundle_copy, tmp_path):
    bundle = tiny_build["dist"] / "onnxruntime-int8"
    # the field the bundle was adapted to, and later images of the same field (other pixels)
    adapted_to, dark = ((_images(64, seed=s)[0] * 0.5).astype(np.uint8) for s in (3, 4))
    adapted = bundle_copy("onnxruntime-int8")
    _with_field(adapted, adapted_to)
    _telemetry(bundle, dark, tmp_path / "dark.jsonl")
    code, out, err = _run(bundle, tmp_path / "dark.jsonl", "--alternative", adapted)
    assert code == 3 and out == f"drift: switch to {adapted}, the window's images fit its reference " \
                                f"(signals: {out.split('(signals: ')[1]}", err
    assert "mean KS" in err and f"{adapted}" in err
    report = json.loads(_run(bundle, tmp_path / "dark.jsonl", "--alternative", adapted, "--json")[1])
    assert report["switch_to"] == str(adapted) and report["alternatives"][0]["fits"]
    # the adapted bundle's own monitor is quiet on the field it was made for
    _telemetry(adapted, dark, tmp_path / "adapted.jsonl")
    assert _run(adapted, tmp_path / "adapted.jsonl")[:2] == (0, "ok\n")
    # among equally close alternatives (a build's bundles share their image statistics) the one of the
    # running bundle's target and precision is named, whichever was passed first
    adapted_fp32 = bundle_copy("onnxruntime-fp32")
    _with_field(adapted_fp32, adapted_to)
    report = json.loads(_run(bundle, tmp_path / "dark.jsonl", "--alternative", adapted_fp32, "--alternative", adapted,
                             "--json")[1])
    fits = {a["bundle"]: a["fit"] for a in report["alternatives"]}
    assert fits[str(adapted_fp32)] == fits[str(adapted)] and report["switch_to"] == str(adapted)
    # on the build's own images: ok, nothing to switch to
    _telemetry(bundle, _images(64, seed=2)[0], tmp_path / "ok.jsonl")
    assert _run(bundle, tmp_path / "ok.jsonl", "--alternative", adapted)[:2] == (0, "ok\n")


def test_cli_refuses_an_alternative_of_another_task_or_image_size(tiny_build, bundle_copy, tmp_path):
    bundle = tiny_build["dist"] / "onnxruntime-int8"
    _telemetry(bundle, _images(64, seed=2)[0], tmp_path / "t.jsonl")
    for name, change, fragment in (("labels", {"labels": ["cat", "dog"]}, "has labels ['cat', 'dog']"),
                                   ("size", {"preprocess": "image_size"}, "has 48 px images")):
        other = bundle_copy("onnxruntime-int8")
        meta = json.loads((other / MANIFEST).read_text())
        if name == "labels":
            meta.update(change)
        else:
            meta["preprocess"]["image_size"] = 48
        (other / MANIFEST).write_text(json.dumps(seal(meta), indent=2))
        code, out, err = _run(bundle, tmp_path / "t.jsonl", "--alternative", other)
        assert code == 2 and fragment in err and "pass as --alternative only builds of the same task" in err, err
        assert len(err.strip().splitlines()) == 1 and not out
        shutil.rmtree(other)


def test_cli_names_a_bad_alternative_and_leaves_out_the_running_bundle(tiny_build, tmp_path):
    bundle = tiny_build["dist"] / "onnxruntime-int8"
    _telemetry(bundle, _images(64, seed=2)[0], tmp_path / "t.jsonl")
    (tmp_path / "empty").mkdir()
    cases = {"missing": (tmp_path / "none", "--alternative {}: bundle folder {} does not exist"),
             "file": (tmp_path / "t.jsonl", "--alternative {}: bundle folder {} is a file, not a folder"),
             "not a bundle": (tmp_path / "empty", "--alternative {}: bundle {}: no bundle.json"),
             "the build's folder": (tiny_build["dist"], "--alternative {}: {} is a build's folder of ")}
    for name, (folder, fragment) in cases.items():
        code, out, err = _run(bundle, tmp_path / "t.jsonl", "--alternative", folder)
        assert code == 2 and fragment.format(folder, folder) in err and "(fix: " in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and not out, (name, err)
    assert f"pass one of them: {tiny_build['dist'] / 'onnxruntime-fp32'}" in \
        _run(bundle, tmp_path / "t.jsonl", "--alternative", tiny_build["dist"])[2]
    # every bundle the unit holds, the running one and a repeat among them: each compared once
    fp32 = tiny_build["dist"] / "onnxruntime-fp32"
    code, out, err = _run(bundle, tmp_path / "t.jsonl", "--json", *sum((["--alternative", b] for b in (bundle, fp32, fp32)), []))
    assert code == 0 and [a["bundle"] for a in json.loads(out)["alternatives"]] == [str(fp32)], err
    assert "the running bundle or one given before; left out" in err
