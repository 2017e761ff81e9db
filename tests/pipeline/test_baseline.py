"""Baseline gates (`build --baseline PREVIOUS`, `gates.baseline`): every artifact against the previous
release's same artifact, in report.json, JUnit and the exit code; a bad baseline stops the build
before any stage runs."""

import copy
import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from edgepipe.core.errors import DataError
from edgepipe.pipeline.baseline import baseline_gates
from edgepipe.pipeline.compare import LoadedReport
from edgepipe.pipeline.config import BaselineConfig
from tests.pipeline.conftest import build, manifest, ran
from tests.pipeline.reports import dropped, synthetic_report


def _gates(report, kind):
    return {g["artifact"]: g for g in report["gates"] if g["gate"] == kind}


def test_the_same_release_as_baseline_passes_every_baseline_gate(project, tmp_path):
    root, _ = project
    previous = tmp_path / "v1" / "report.json"
    previous.parent.mkdir()
    shutil.copy(root / "out" / "report.json", previous)
    result = build(root / "build.yaml", "--baseline", previous, "--junit", root / "out" / "junit.xml")
    assert result.exit_code == 0, result.output
    assert ran(root) == ["report"]  # the baseline is read by the report only
    report = json.loads((root / "out" / "report.json").read_text())
    ok_rows = [r["name"] for r in report["rows"] if r["status"] == "ok"]
    accuracy = _gates(report, "baseline_accuracy_drop")
    assert sorted(n for n, g in accuracy.items() if g["status"] == "passed") == sorted(ok_rows)
    assert all(g["value"] == 0 for n, g in accuracy.items() if n in ok_rows)
    assert report["baseline"]["compared_on"].startswith("the same test split")
    cases = {(c.get("classname"), c.get("name")) for c in ET.parse(root / "out" / "junit.xml").iter("testcase")}
    assert ("edgepipe.onnxruntime-int8", "baseline_accuracy_drop") in cases


def test_a_slower_release_fails_the_latency_gate_with_exit_3(project, tmp_path):
    """The baseline says every artifact ran 10x faster on this same CPU: each fails its latency
    gate, in the report and the JUnit file, and the build exits 3."""
    root, _ = project
    previous = json.loads((root / "out" / "report.json").read_text())
    for r in previous["rows"]:
        if r.get("latency_ms"):
            r["latency_ms"] = {k: v / 10 if k != "runs" else v for k, v in r["latency_ms"].items()}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(previous))
    result = build(root / "build.yaml", "--baseline", path, "--junit", root / "out" / "junit.xml")
    assert result.exit_code == 3, result.output
    report = json.loads((root / "out" / "report.json").read_text())
    latency = _gates(report, "baseline_latency_increase")
    assert latency["onnxruntime-int8"]["status"] == "failed" and "vs the baseline" in latency["onnxruntime-int8"]["reason"]
    assert not report["passed"]
    failures = [c for c in ET.parse(root / "out" / "junit.xml").iter("testcase") if c.find("failure") is not None]
    assert any(c.get("name") == "baseline_latency_increase" for c in failures)
    # a new release at that path reruns the report stage (its key holds the baseline's bytes)
    path.write_text(json.dumps(json.loads((root / "out" / "report.json").read_text())))
    rerun = build(root / "build.yaml", "--baseline", path)
    assert rerun.exit_code == 0, rerun.output  # against its own measurements: no drop, no slow-down
    assert ran(root) == ["report"]


def test_a_missing_or_own_baseline_stops_the_build_before_any_stage(project):
    root, _ = project
    before = manifest(root)["stages"]
    missing = build(root / "build.yaml", "--baseline", root / "nowhere.json")
    assert missing.exit_code == 2 and "baseline" in missing.output and "nowhere.json" in missing.output
    own = build(root / "build.yaml", "--baseline", root / "out")
    assert own.exit_code == 2 and "this build's own output" in own.output
    assert manifest(root)["stages"] == before


def test_accuracy_gate_fails_the_artifact_that_dropped_two_points():
    old = synthetic_report()
    new = dropped(old, "onnxruntime-int8", 2)
    gates, entry = baseline_gates(new, LoadedReport(old, "v1.json", "ab" * 32),
                                  BaselineConfig(report="v1.json", max_latency_increase=None))
    status = {g["artifact"]: g["status"] for g in gates}
    assert status == {"torch-fp32": "passed", "onnxruntime-fp32": "passed", "onnxruntime-int8": "failed"}
    failed = next(g for g in gates if g["status"] == "failed")
    assert failed["value"] == pytest.approx(0.02) and "-2.00 pt" in failed["reason"]
    assert entry["compared_on"] == "the same test split (100 images)" and entry["sha256"] == "ab" * 32


def test_a_baseline_with_another_split_compares_on_the_common_images_or_refuses():
    old = synthetic_report()
    new = synthetic_report()
    for t in new["test_set"][:30]:
        t["id"] = "new/" + t["id"]
    lenient = BaselineConfig(report="v1.json", min_common=0.5)
    gates, entry = baseline_gates(new, LoadedReport(old, "v1.json", "0" * 64), lenient)
    assert entry["compared_on"].startswith("the 70 images common")
    assert all(g["status"] == "passed" for g in gates if g["gate"] == "baseline_accuracy_drop")
    for t in new["test_set"]:
        t["id"] = "new/" + t["id"]
    with pytest.raises(DataError, match="share no test image"):
        baseline_gates(new, LoadedReport(old, "v1.json", "0" * 64), lenient)


def test_a_renamed_or_lost_artifact_fails_its_baseline_gate():
    """A new name must not let an artifact escape the comparison with its previous release."""
    old = synthetic_report()
    new = copy.deepcopy(old)
    next(r for r in new["rows"] if r["name"] == "onnxruntime-int8")["name"] = "ort-int8"
    gates, _ = baseline_gates(new, LoadedReport(old, "v1.json", "0" * 64), BaselineConfig(report="v1.json"))
    by = {(g["artifact"], g["gate"]): g for g in gates}
    assert by[("onnxruntime-int8", "baseline_accuracy_drop")]["status"] == "failed"
    assert "renamed" in by[("onnxruntime-int8", "baseline_accuracy_drop")]["reason"]
    assert by[("ort-int8", "baseline_accuracy_drop")]["status"] == "skipped"


def test_a_baseline_sharing_few_test_images_fails_instead_of_comparing_on_them():
    """Another seed's split shares a few images by chance: 87 % -> 27 % would pass on the one image
    both hold; the gate fails and says why."""
    old = synthetic_report()
    new = dropped(synthetic_report(), "onnxruntime-int8", 60)
    for t in new["test_set"][:-5]:
        t["id"] = "other/" + t["id"]
    gates, entry = baseline_gates(new, LoadedReport(old, "v1.json", "0" * 64), BaselineConfig(report="v1.json"))
    assert {g["status"] for g in gates} == {"failed"} and len(gates) == 3
    assert "only 5 of this build's 100 test images" in gates[0]["reason"]
    assert entry["compared_on"].startswith("the 5 images common")


def test_a_baseline_without_per_image_predictions_is_refused_before_any_stage(project, tmp_path):
    root, _ = project
    previous = json.loads((root / "out" / "report.json").read_text())
    del previous["test_set"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(previous))
    before = manifest(root)["stages"]
    result = build(root / "build.yaml", "--baseline", path)
    assert result.exit_code == 2 and "no per-image predictions" in result.output
    assert manifest(root)["stages"] == before
