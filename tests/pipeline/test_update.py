"""`edgepipe update` (pipeline/update.py, pipeline/previous.py): a release from the previous one,
gated against it on the dataset's test images and on the new field test images."""

import copy
import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.files import sha256_file
from edgepipe.pipeline.baseline import baseline_gates, domain_report
from edgepipe.pipeline.compare import LoadedReport, load_report
from edgepipe.pipeline.config import BaselineConfig
from tests.conftest import write_image
from tests.pipeline.reports import CLASSES, synthetic_report


# --- the gates, on hand-made reports -----------------------------------------------------------------

def _with_field(report: dict, n: int = 40, seed: int = 3) -> tuple[dict, dict]:
    """report plus n labelled field test images (this build right on all of them), and the previous
    release's predictions on those images (right on half)."""
    field = synthetic_report(n, seed)
    labels = [CLASSES.index(t["label"]) for t in field["test_set"]]
    images = [t | {"id": "field/" + t["id"], "sha256": f"f{i:063x}", "domain": "field"}
              for i, t in enumerate(field["test_set"])]
    out = copy.deepcopy(report)
    out["test_set"] = out["test_set"] + images
    out["test_images"] = len(out["test_set"])
    for r in out["rows"]:
        r["predictions"] = r["predictions"] + labels
        r["confidence"] = r["confidence"] + [0.9] * n
    half = [y if i % 2 else (y + 1) % len(CLASSES) for i, y in enumerate(labels)]
    previous = {"format": "edgepipe-previous-on-field/1", "classes": CLASSES, "test_set": images,
                "rows": [{"name": r["name"], "status": "ok", "reason": None, "predictions": half,
                          "confidence": [0.8] * n} for r in report["rows"]]}
    return out, previous


def _by(gates, kind):
    return {g["artifact"]: g for g in gates if g["gate"] == kind}


def test_field_gain_and_no_regression_on_the_dataset_images_are_both_gated():
    old = synthetic_report()
    new, previous = _with_field(old)
    gates, entry = baseline_gates(new, LoadedReport(old, "v1.json", "0" * 64),
                                  BaselineConfig(report="v1.json", max_latency_increase=None), previous)
    drop, gain = _by(gates, "baseline_accuracy_drop"), _by(gates, "baseline_field_gain")
    # 100 of the 140 test images are the dataset's: all of them in the baseline (not 71 % < min_common)
    assert entry["compared_on"] == "the same test split (100 images)"
    assert entry["field_compared_on"] == "the 40 field test images"
    assert {g["status"] for g in drop.values()} == {"passed"} and drop["onnxruntime-int8"]["value"] == 0
    assert set(gain) == {"torch-fp32", "onnxruntime-fp32", "onnxruntime-int8"}
    assert all(g["status"] == "passed" and g["value"] == pytest.approx(0.5) for g in gain.values())


def test_too_little_gain_on_the_field_images_fails_with_the_numbers():
    old = synthetic_report()
    new, previous = _with_field(old)
    gates, _ = baseline_gates(new, LoadedReport(old, "v1.json", "0" * 64), BaselineConfig(report="v1.json"),
                              previous, min_field_gain=0.6)
    gain = _by(gates, "baseline_field_gain")["onnxruntime-int8"]
    assert gain["status"] == "failed" and "+50.00 pt vs the previous release on 40 field" in gain["reason"]
    assert "+60.00 pt asked" in gain["reason"]


def test_a_previous_artifact_that_cannot_run_here_is_skipped_with_the_reason():
    old = synthetic_report()
    new, previous = _with_field(old)
    trt = next(r for r in previous["rows"] if r["name"] == "onnxruntime-int8")
    trt.update(status="failed", reason="could not run here: BackendUnavailable: no GPU", predictions=None)
    gates, _ = baseline_gates(new, LoadedReport(old, "v1.json", "0" * 64), BaselineConfig(report="v1.json"), previous)
    g = _by(gates, "baseline_field_gain")["onnxruntime-int8"]
    assert g["status"] == "skipped" and "no GPU" in g["reason"]


def test_the_latency_gate_uses_the_previous_release_re_timed_in_this_run():
    """The previous report's latencies were timed on another day (here 10x faster: a quiet machine);
    the previous stage re-timed its artifacts in this run, as fast as this build's: the gate passes
    on those. An artifact it could not time here is skipped, not passed on the stale number."""
    old = synthetic_report()
    new, previous = _with_field(old)
    stale = copy.deepcopy(old)
    for r in stale["rows"]:
        r["latency_ms"] = {k: v / 10 if k != "runs" else v for k, v in r["latency_ms"].items()}
    timed = {r["name"]: r["latency_ms"] for r in new["rows"]}
    previous["machine"] = old["machine"]
    for r in previous["rows"]:
        r["latency_ms"] = timed[r["name"]]
    previous["rows"][2].update(status="failed", reason="could not run here: no GPU", predictions=None,
                               latency_ms=None)
    bcfg = BaselineConfig(report="v1.json", max_latency_increase=0.5)
    gates, entry = baseline_gates(new, LoadedReport(stale, "v1.json", "0" * 64), bcfg, previous)
    latency = _by(gates, "baseline_latency_increase")
    assert latency["onnxruntime-fp32"]["status"] == "passed" and latency["onnxruntime-fp32"]["value"] == 0
    assert latency["onnxruntime-int8"]["status"] == "skipped"
    assert "re-timed" in entry["latency_from"]
    # without the re-timed numbers, the stale report's fail the same build
    alone, _ = baseline_gates(new, LoadedReport(stale, "v1.json", "0" * 64), bcfg)
    assert _by(alone, "baseline_latency_increase")["onnxruntime-fp32"]["status"] == "failed"


def test_domain_report_recomputes_each_row_on_its_images():
    old = synthetic_report()
    new, _ = _with_field(old)
    field = domain_report(new, "field")
    assert field["test_images"] == 40 and all(r["accuracy"] == 1.0 for r in field["rows"])
    dataset = domain_report(new, "dataset")
    assert [r["accuracy"] for r in dataset["rows"]] == [r["accuracy"] for r in old["rows"]]
    assert domain_report(old, "field") is None and domain_report(old, "dataset") is old


# --- the command, on the tiny build ------------------------------------------------------------------

def _field_images(root, per_class=8):
    """Brighter, lower-contrast stripes than the dataset's: the same classes from another camera."""
    from PIL import Image

    rng = np.random.default_rng(9)
    for cls in ("horizontal", "vertical"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            wave = ((np.arange(32) + rng.integers(0, 12)) // (rng.integers(6, 12) // 2)) % 2 * 70 + 150
            img = np.tile(wave[:, None], (1, 32)) if cls == "horizontal" else np.tile(wave[None, :], (32, 1))
            Image.fromarray(np.clip(img + rng.normal(0, 10, (32, 32)), 0, 255).astype(np.uint8), "L").save(
                root / cls / f"cam2-{i}.png")
    return root


@pytest.fixture(scope="module")
def updated(resumed_build, tmp_path_factory):
    assert resumed_build["final"].exit_code == 0, resumed_build["final"].output
    root = tmp_path_factory.mktemp("update") / "p"
    shutil.copytree(resumed_build["root"], root)
    field = _field_images(root / "field")
    # the baseline's limits are the config's (its report is PREVIOUS's); latency off: a test machine's
    # timings swing more than the default x1.5 limit
    _config_with(root, "build.yaml", "gates", "baseline", {"report": "elsewhere.json", "max_latency_increase": None})
    result = CliRunner().invoke(cli, ["update", str(root / "build.yaml"), "--from", str(root / "out"),
                                      "--data", str(field)])
    return root, result


def test_update_trains_from_the_previous_model_and_gates_both_test_sets(updated):
    root, result = updated
    assert result.exit_code == 0, result.output
    out = root / "out-update"  # the config's output_dir is the previous release's: a folder of its own
    report, previous = (json.loads((d / "report.json").read_text()) for d in (out, root / "out"))
    assert report["name"] == "tiny-update"
    assert report["weights"]["origin"] == "previous release"
    assert report["weights"]["sha256"] == sha256_file(root / "out" / "finetune" / "model.pt")
    dataset = [t for t in report["test_set"] if t["domain"] == "dataset"]
    assert dataset == [t | {"domain": "dataset"} for t in previous["test_set"]]  # the old test set, untouched
    field_test = [t for t in report["test_set"] if t["domain"] == "field"]
    assert field_test and all("/cam2-" in t["id"] and t["id"].startswith("field/") for t in field_test)
    assert report["baseline"]["report"] == str(root / "out" / "report.json")
    ok_rows = {r["name"] for r in report["rows"] if r["status"] == "ok"}
    for kind in ("baseline_accuracy_drop", "baseline_field_gain"):
        assert set(_by(report["gates"], kind)) == ok_rows, kind
    assert [d["domain"] for d in report["domains"]] == ["dataset", "field"]
    assert report["domains"][1]["images"] == len(field_test)
    measured = json.loads((out / "previous" / "field_predictions.json").read_text())
    assert [t["id"] for t in measured["test_set"]] == [t["id"] for t in field_test]
    assert measured["machine"]["cpu"] == report["machine"]["cpu"]  # re-timed here, beside this build
    assert all(r["latency_ms"]["p50"] > 0 for r in measured["rows"] if r["status"] == "ok")
    assert "field test images" in result.output and "dataset test images" in result.output
    assert "Accuracy on each part of the test split" in (out / "report.md").read_text()
    assert (root / "dist" / "tiny-update").is_dir()


def test_update_run_again_is_up_to_date(updated):
    root, _ = updated
    again = CliRunner().invoke(cli, ["update", str(root / "build.yaml"), "--from", str(root / "out"),
                                     "--data", str(root / "field")])
    assert again.exit_code == 0, again.output
    assert json.loads((root / "out-update" / "manifest.json").read_text())["last_run"]["ran"] == []


def test_the_field_gain_is_the_difference_of_the_two_releases_on_the_field_images(updated):
    """The gate's value is this build's field accuracy minus the previous release's on the same
    images, recomputed here from the predictions; asking for one image more than that fails it."""
    root, _ = updated
    report = load_report(root / "out-update").report
    measured = json.loads((root / "out-update" / "previous" / "field_predictions.json").read_text())
    labels = [measured["classes"].index(t["label"]) for t in measured["test_set"]]
    before = {r["name"]: np.mean(np.array(r["predictions"]) == labels) for r in measured["rows"] if r["status"] == "ok"}
    after = report["domains"][1]["accuracy"]
    gains = _by(report["gates"], "baseline_field_gain")
    assert set(gains) == set(before)
    for name, g in gains.items():
        assert g["value"] == pytest.approx(after[name] - before[name])
    int8 = gains["onnxruntime-int8"]["value"]
    gates, _ = baseline_gates(report, load_report(root / "out"), BaselineConfig(report=root / "out"), measured,
                              min_field_gain=int8 + 1 / len(labels))
    assert _by(gates, "baseline_field_gain")["onnxruntime-int8"]["status"] == "failed"


def _config_with(root, name, section, key, value):
    cfg = yaml.safe_load((root / "build.yaml").read_text())
    cfg[section][key] = value
    (root / name).write_text(yaml.safe_dump(cfg))
    return root / name


def _update(root, config, *extra):
    return CliRunner().invoke(cli, ["update", str(config), "--from", str(root / "out"), "--data",
                                    str(root / "field"), *map(str, extra)])


def test_update_refuses_another_backbone_with_the_fix(updated):
    root, _ = updated
    result = _update(root, _config_with(root, "lite1.yaml", "model", "backbone", "tf_efficientnet_lite1"),
                     "--out", root / "other", "--name", "other")
    assert result.exit_code == 2, result.output
    assert "is a tf_efficientnet_lite0, this config builds a tf_efficientnet_lite1" in result.output
    assert "set model.backbone: tf_efficientnet_lite0" in result.output
    assert not (root / "other").exists()  # refused before any stage


@pytest.mark.parametrize("start", [(), ("--start", "pretrained")])
def test_update_refuses_another_label_set_with_the_fix(updated, start):
    """From the previous model or from pretrained weights: the two releases must share their labels."""
    root, _ = updated
    if not (root / "data3").exists():
        shutil.copytree(root / "data", root / "data3")
        write_image(root / "data3" / "diagonal" / "0.png", size=(32, 32))
    result = _update(root, _config_with(root, "three.yaml", "dataset", "root", "data3"),
                     "--out", root / "other", "--name", "other", *start)
    assert result.exit_code == 2, result.output
    assert "classes horizontal, vertical, this dataset has diagonal, horizontal, vertical" in result.output
    assert "new release with the new label set" in result.output
    assert not (root / "other").exists()  # refused before any stage


def test_an_update_started_from_pretrained_weights_is_gated_like_one_from_the_previous_model(updated):
    root, _ = updated
    result = _update(root, root / "build.yaml", "--start", "pretrained", "--out", root / "fresh", "--name", "fresh")
    assert result.exit_code == 0, result.output
    report = json.loads((root / "fresh" / "report.json").read_text())
    assert report["weights"]["origin"] != "previous release"
    assert report["weights"]["sha256"] != sha256_file(root / "out" / "finetune" / "model.pt")
    ok_rows = {r["name"] for r in report["rows"] if r["status"] == "ok"}
    for kind in ("baseline_accuracy_drop", "baseline_field_gain"):
        assert set(_by(report["gates"], kind)) == ok_rows, kind
    assert report["baseline"]["report"] == str(root / "out" / "report.json")
    # the choice is part of the build's identity: the default from before leaves it as it was
    from edgepipe.pipeline.config import load_config
    from edgepipe.pipeline.update import with_update

    cfg = load_config(root / "build.yaml")
    fresh, default, previous = (with_update(cfg, root / "out", root / "field", start=s) for s in ("pretrained", None,
                                                                                                  "previous"))
    assert fresh.update.start == "pretrained" and default.update.start == "previous"
    assert default.sha256() == previous.sha256() != fresh.sha256()
    # a config's own update section keeps its settings; --start, when given, overrides its start
    from edgepipe.pipeline.config import UpdateConfig

    sectioned = cfg.model_copy(update={"update": UpdateConfig(previous=root / "out", min_field_gain=-0.5,
                                                              start="pretrained")})
    for start, expect in ((None, "pretrained"), ("previous", "previous"), ("pretrained", "pretrained")):
        made = with_update(sectioned, root / "out", root / "field", start=start).update
        assert (made.start, made.min_field_gain) == (expect, -0.5), start
    before = default.model_dump(mode="json", exclude={"tracking"})  # an update's config before update.start existed
    del before["update"]["start"]
    assert default.sha256() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("extra,expect", [
    (("--out", "OUT"), "write into the previous release's folder"),
    (("--name", "bad name"), "name: String should match pattern"),
])
def test_update_refuses_to_overwrite_the_previous_release_or_a_bad_name(updated, extra, expect):
    root, _ = updated
    before = sha256_file(root / "out" / "report.json")
    result = _update(root, root / "build.yaml", *[str(root / "out") if e == "OUT" else e for e in extra])
    assert result.exit_code == 2 and expect in result.output, result.output
    assert sha256_file(root / "out" / "report.json") == before


def test_update_from_a_folder_that_is_no_build(updated, tmp_path):
    root, _ = updated
    result = CliRunner().invoke(cli, ["update", str(root / "build.yaml"), "--from", str(tmp_path),
                                      "--data", str(root / "field")])
    assert result.exit_code == 2 and "holds no manifest.json" in result.output, result.output


def test_an_update_of_an_update_writes_next_to_it_not_over_the_first_release(updated, tmp_path):
    """build/x-update's update must not fall back to the config's output_dir (release 1's folder)."""
    from edgepipe.pipeline.config import load_config
    from edgepipe.pipeline.update import with_update

    root, _ = updated
    cfg = load_config(root / "build.yaml")
    second = with_update(cfg, root / "out-update", root / "field")
    assert second.output_dir == (root / "out-update-update").resolve()
    assert second.name == "tiny-update-update"


def test_update_refuses_an_unfinished_previous_release(updated, tmp_path):
    root, _ = updated
    broken = tmp_path / "half"
    shutil.copytree(root / "out", broken)
    m = json.loads((broken / "manifest.json").read_text())
    m["stages"]["verify"]["status"] = "running"
    (broken / "manifest.json").write_text(json.dumps(m))
    result = CliRunner().invoke(cli, ["update", str(root / "build.yaml"), "--from", str(broken),
                                      "--data", str(root / "field"), "--out", str(tmp_path / "new")])
    assert result.exit_code == 2, result.output
    assert "not a finished build: its stage(s) verify did not complete" in result.output
    assert not (tmp_path / "new").exists()


def test_update_refuses_another_image_size_with_the_fix(updated):
    root, _ = updated
    cfg = yaml.safe_load((root / "build.yaml").read_text())
    size = cfg["model"]["image_size"]
    result = _update(root, _config_with(root, "bigger.yaml", "model", "image_size", size + 32),
                     "--out", root / "other", "--name", "other")
    assert result.exit_code == 2, result.output
    assert f"set model.image_size: {size}" in result.output
    assert not (root / "other").exists()


def test_an_update_section_gated_against_another_release_is_refused(updated, tmp_path):
    root, _ = updated
    cfg = yaml.safe_load((root / "build.yaml").read_text())
    other = tmp_path / "v0.json"
    shutil.copy(root / "out" / "report.json", other)
    cfg.update(output_dir=str(tmp_path / "new"), update={"previous": str(root / "out")},
               gates={**cfg["gates"], "baseline": {"report": str(other)}})
    cfg["dataset"].update(root=str(root / "data"), field={"root": str(root / "field")})
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli, ["build", str(tmp_path / "u.yaml")])
    assert result.exit_code == 2, result.output
    assert "is not the report of the previous release" in result.output and "drop gates.baseline.report" in result.output
