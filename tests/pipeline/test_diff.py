"""`edgepipe diff OLD NEW`: no change with itself, exit 3 naming an artifact whose accuracy dropped,
exit 2 for different test splits unless --common, and the changed test images listed."""

import copy
import json

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.pipeline.compare import compare
from tests.pipeline.reports import dropped, synthetic_report, with_predictions


def _write(path, report):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def diff(*args):
    return CliRunner().invoke(cli, ["diff", *map(str, args)])


@pytest.fixture
def old(tmp_path):
    return _write(tmp_path / "v1" / "report.json", synthetic_report())


def test_a_report_against_itself_is_no_change(old):
    result = diff(old, old)
    assert result.exit_code == 0, result.output
    assert "**no change**" in result.output and "| onnxruntime-int8 | 87.00% → 87.00% | +0.00 |" in result.output


def test_a_build_folder_works_as_well_as_its_report_json(old):
    assert diff(old.parent, old).exit_code == 0


def test_int8_two_points_worse_exits_3_naming_the_artifact(old, tmp_path):
    new = _write(tmp_path / "v2" / "report.json", dropped(synthetic_report(), "onnxruntime-int8", 2))
    result = diff(old, new)
    assert result.exit_code == 3, result.output
    assert "REGRESSION: onnxruntime-int8: accuracy -2.00 pt" in result.output
    assert "onnxruntime-fp32:" not in result.output.split("REGRESSION")[1].splitlines()[0]
    # the two images are listed, each as broken by the new release
    assert result.output.count("| broke |") == 2 and "Test images whose prediction changed: 2" in result.output
    # a limit above the drop lets it pass, still reporting the change
    relaxed = diff(old, new, "--max-accuracy-drop", "0.025")
    assert relaxed.exit_code == 0 and "changed, no regression" in relaxed.output


def test_one_image_is_within_the_default_limit_of_one_point(old, tmp_path):
    new = _write(tmp_path / "v2" / "report.json", dropped(synthetic_report(), "onnxruntime-int8", 1))
    result = diff(old, new)
    assert result.exit_code == 0 and "-1.00" in result.output


def test_different_test_splits_exit_2_unless_common_is_asked(old, tmp_path):
    other = synthetic_report()
    for t in other["test_set"][:40]:  # another split: 40 images replaced by others
        t["id"] = "other/" + t["id"]
    new = _write(tmp_path / "v2" / "report.json", other)
    refused = diff(old, new)
    assert refused.exit_code == 2
    assert "test splits differ: 60 image(s) in common, 40 only in OLD" in refused.output and "--common" in refused.output
    common = diff(old, new, "--common")
    assert common.exit_code == 0, common.output
    assert "the 60 images common to both test splits" in common.output


def test_a_relabelled_image_is_refused(old, tmp_path):
    other = synthetic_report()
    other["test_set"][5]["label"] = "finger" if other["test_set"][5]["label"] != "finger" else "ok"
    result = diff(old, _write(tmp_path / "v2" / "report.json", other))
    assert result.exit_code == 2 and "cells/0005.png" in result.output


def test_json_and_html_outputs(old, tmp_path):
    new = _write(tmp_path / "v2" / "report.json", dropped(synthetic_report(), "onnxruntime-int8", 2))
    html = tmp_path / "diff.html"
    result = diff(old, new, "--json", "--html", html)
    assert result.exit_code == 3
    body = json.loads(result.output)
    assert body["regressions"] == [{"artifact": "onnxruntime-int8", "problem": body["regressions"][0]["problem"]}]
    int8 = next(a for a in body["artifacts"] if a["name"] == "onnxruntime-int8")
    assert int8["accuracy_delta"] == pytest.approx(-0.02) and int8["predictions_changed"] == 2
    assert len(body["images"]) == 2 and {i["effect"] for i in body["images"]} == {"broke"}
    page = html.read_text()
    assert "REGRESSION" in page and "cells/" in page and "http" not in page


def test_a_failed_artifact_and_a_slower_one(old, tmp_path):
    new = copy.deepcopy(synthetic_report())
    int8 = next(r for r in new["rows"] if r["name"] == "onnxruntime-int8")
    fp32 = next(r for r in new["rows"] if r["name"] == "onnxruntime-fp32")
    fp32["latency_ms"]["p50"] *= 3
    for k in ("accuracy", "macro_f1", "per_class_recall", "confusion", "accuracy_delta", "agreement", "vs_parent",
              "latency_ms", "throughput", "predictions", "confidence", "per_class_precision", "per_class_f1"):
        int8[k] = None
    int8 |= {"status": "failed", "reason": "could not run: boom"}
    path = _write(tmp_path / "v2" / "report.json", new)
    result = diff(old, path)
    assert result.exit_code == 3 and "onnxruntime-int8: ran in OLD; in NEW failed: could not run: boom" in result.output
    assert "x3.00" in result.output and "onnxruntime-fp32: p50" not in result.output  # latency is opt-in
    slower = diff(old, path, "--max-latency-increase", "0.5")
    assert "onnxruntime-fp32: p50 latency x3.00 (limit x1.50)" in slower.output


def test_not_a_report_is_exit_2(tmp_path, old):
    (tmp_path / "x.json").write_text("[]")
    assert diff(old, tmp_path / "nothing").exit_code == 2
    result = diff(tmp_path / "x.json", old)
    assert result.exit_code == 2 and "schema" in result.output


def test_compare_per_class_recall_on_the_same_split():
    old = synthetic_report()
    c = compare(old, dropped(old, "onnxruntime-int8", 2))
    int8 = next(a for a in c.artifacts if a.name == "onnxruntime-int8")
    changed = {k: v for k, v in int8.recall_delta.items() if v}
    assert changed and all(v < 0 for v in changed.values())
    assert c.split == "same" and not c.unchanged()


def test_the_same_images_in_another_order_are_the_same_split(old, tmp_path):
    report = synthetic_report()
    order = list(range(len(report["test_set"])))[::-1]
    shuffled = copy.deepcopy(report)
    shuffled["test_set"] = [report["test_set"][i] for i in order]
    for r in shuffled["rows"]:
        r["predictions"] = [r["predictions"][i] for i in order]
        r["confidence"] = [r["confidence"][i] for i in order]
    result = diff(old, _write(tmp_path / "v2" / "report.json", shuffled))
    assert result.exit_code == 0 and "**no change**" in result.output, result.output


def test_a_renamed_artifact_and_one_that_now_fails_to_build_are_listed(old, tmp_path):
    new = copy.deepcopy(synthetic_report())
    next(r for r in new["rows"] if r["name"] == "onnxruntime-int8")["name"] = "ort-int8"
    new["rows"].append({"name": "openvino-int8", "target": "openvino", "precision": "int8", "status": "failed",
                        "reason": "nncf crashed", "proxy": None, "details": {}, "size_bytes": 0})
    result = diff(old, _write(tmp_path / "v2" / "report.json", new))
    assert result.exit_code == 3
    assert "onnxruntime-int8: ran in OLD, not in NEW (renamed, or its target left the config)" in result.output
    assert "| ort-int8 | new |" in result.output and "| openvino-int8 | new, not running (failed: nncf crashed) |" in result.output


def test_per_class_recall_is_compared_on_the_common_images_too(old, tmp_path):
    other = dropped(synthetic_report(), "onnxruntime-int8", 2)
    for t in other["test_set"][80:]:
        t["id"] = "other/" + t["id"]
    c = compare(synthetic_report(), other, allow_common=True)
    int8 = next(a for a in c.artifacts if a.name == "onnxruntime-int8")
    assert c.split == "common" and set(int8.recall_delta) == {"ok", "crack", "finger"}
    assert sum(v < 0 for v in int8.recall_delta.values() if v is not None) >= 1


def test_hostile_names_are_escaped_in_the_html_and_the_page_never_replaces_an_input(old, tmp_path):
    evil = synthetic_report()
    evil["test_set"][0]["id"] = "<img src=x onerror=alert(1)>.png"
    pred = list(next(r for r in evil["rows"] if r["name"] == "onnxruntime-int8")["predictions"])
    pred[0] = (pred[0] + 1) % 3  # image 0's prediction changes: it is listed by its hostile id
    evil_old = _write(tmp_path / "v1e" / "report.json", evil)
    html = tmp_path / "d.html"
    new = _write(tmp_path / "v2" / "report.json", with_predictions(evil, "onnxruntime-int8", pred))
    assert diff(evil_old, new, "--html", html).exit_code == 0
    page = html.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    refused = diff(old, tmp_path / "v2" / "report.json", "--html", tmp_path / "v2" / "report.json")
    assert refused.exit_code == 2 and "one of the reports compared" in refused.output
