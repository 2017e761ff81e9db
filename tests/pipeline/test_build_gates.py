"""A whole build on a synthetic, easy dataset: healthy artifacts pass the gates (exit 0); a
deliberately broken int8 artifact fails them (exit 3) while the other rows are still reported."""

import json
import xml.etree.ElementTree as ET

import pytest
import yaml
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.targets.onnxruntime.builder import OrtQuantPreset
from tests.conftest import write_stripes


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates")
    write_stripes(root / "data")
    cfg = {"name": "blobs", "output_dir": "out",
           "dataset": {"source": "imagefolder", "root": "data", "split": {"val": 0.2, "test": 0.3}},
           "model": {"image_size": 64},
           "finetune": {"warmup_epochs": 40, "epochs": 0, "head_lr": 0.01},
           "calibration": {"size": 16},
           "fallback": {"max_float_layers": 2},
           "targets": [{"name": "onnxruntime"}, {"name": "tensorrt", "precisions": ["int8"]}],
           "verify": {"runs": 10, "warmup": 2, "throughput_batch": 8}}
    (root / "build.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_healthy_build_passes_its_gates(project):
    result = CliRunner().invoke(cli, ["build", str(project / "build.yaml"), "--junit", str(project / "out" / "junit.xml")])
    assert result.exit_code == 0, result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["passed"] and report["exit_code"] == 0
    names = [r["name"] for r in report["rows"]]
    assert names == ["torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "tensorrt-int8", "tensorrt-int8-proxy"]
    ok = {r["name"]: r for r in report["rows"]}
    assert ok["torch-fp32"]["accuracy"] >= 0.9
    assert ok["onnxruntime-fp32"]["agreement"] == 1.0 and ok["onnxruntime-fp32"]["vs_parent"]["parent"] == "torch-fp32"
    assert ok["onnxruntime-int8"]["vs_parent"]["parent"] == "onnxruntime-fp32"
    assert ok["onnxruntime-int8"]["details"]["fallback"]["goal_met_on_val"]
    for name in ("onnxruntime-int8", "tensorrt-int8-proxy"):  # both built from the data-aware rounded weights
        assert ok[name]["details"]["weight_rounding"] == "data_aware"
    quantize = json.loads((project / "out" / "manifest.json").read_text())["stages"]["quantize"]
    assert {"int8_weights", "weight_rounding"} <= set(quantize["outputs"])
    assert quantize["metrics"]["weight_rounding"]["median_error_ratio"] < 1
    assert ok["tensorrt-int8"]["status"] == "skipped" and ok["tensorrt-int8"]["reason"] == "tensorrt not installed"
    assert "proxy" in ok["tensorrt-int8-proxy"]["proxy"]
    for r in report["rows"]:
        if r["status"] == "ok":
            lat = r["latency_ms"]
            assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and r["throughput"]["images_per_s"] > 0
            assert sum(map(sum, r["confusion"])) == report["test_images"]
    suite = ET.parse(project / "out" / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and suite.get("skipped") == "1"
    assert "| onnxruntime-int8 |" in (project / "out" / "report.md").read_text()


def test_broken_int8_artifact_fails_the_gates_with_exit_3(project, monkeypatch):
    import onnx
    from onnx import numpy_helper

    original = OrtQuantPreset.quantize

    def quantize_then_corrupt(self, onnx_in, onnx_out, calib):
        original(self, onnx_in, onnx_out, calib)
        model = onnx.load(str(onnx_out))
        for init in model.graph.initializer:  # every weight scale x50: a classic broken-calibration symptom
            if init.name.endswith("_scale") and init.dims:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 50, init.name))
        onnx.save(model, str(onnx_out))

    monkeypatch.setattr(OrtQuantPreset, "quantize", quantize_then_corrupt)
    runner = CliRunner()
    assert runner.invoke(cli, ["quantize", str(project / "build.yaml")]).exit_code == 0
    result = runner.invoke(cli, ["verify", str(project / "build.yaml"), "--junit", str(project / "junit.xml")])
    assert result.exit_code == 3, result.output
    report = json.loads((project / "out" / "report.json").read_text())
    failed = {(g["artifact"], g["gate"]) for g in report["gates"] if g["status"] == "failed"}
    assert ("onnxruntime-int8", "min_agreement") in failed
    assert not any(a == "onnxruntime-fp32" for a, _ in failed)
    assert len(report["rows"]) == 5  # every other result is still written
    broken = next(r for r in report["rows"] if r["name"] == "onnxruntime-int8")
    fallback = broken["details"]["fallback"]  # the fallback tried, could not repair a broken scale, and says so
    assert [s["float_layers"] for s in fallback["steps"]] == [0, 1, 2] and not fallback["goal_met_on_val"]
    assert broken["agreement"] < 0.98
    assert "goal NOT met on val" in (project / "out" / "report.md").read_text()
    suite = ET.parse(project / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) >= 1
    _review_in_chromium(project / "out", report, broken)


def _review_in_chromium(out, report, broken):
    """report.html of the failed build, as a reviewer opens it in a browser: the verdict names the
    failed gate, every chart and confusion matrix is drawn, and the gallery shows the test images the
    broken int8 artifact disagrees on, each with its Grad-CAM; the page loads nothing from outside
    and logs no error. The screenshots stay in build/test-artifacts/ (laptop and phone)."""
    from tests import browser

    gallery = json.loads((out / "explain" / "gallery.json").read_text())
    float_pred = next(r for r in report["rows"] if r["name"] == "torch-fp32")["predictions"]
    int8_rows = [r for r in report["rows"] if r["precision"] == "int8" and r["status"] == "ok"]
    disagree = {i for r in int8_rows for i, (p, q) in enumerate(zip(r["predictions"], float_pred)) if p != q}
    assert {i for i, (p, q) in enumerate(zip(broken["predictions"], float_pred)) if p != q} <= disagree
    assert disagree and gallery["found"]["int8 disagrees"] == len(disagree)
    with browser.launch() as chromium:
        for viewport, shot in ((browser.LAPTOP, "report-laptop.png"), (browser.PHONE, "report-phone.png")):
            with browser.render(chromium, out / "report.html", browser.artifact_path(shot), viewport) as shown:
                page = shown.page
                assert not shown.errors, shown.errors
                # nothing widens the page beyond the screen (wide tables scroll inside their own box)
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport.width
                assert "min_agreement" in page.locator("#verdict").inner_text()
                assert page.locator("#tradeoff svg").count() == 1 and page.locator("#training svg").count() == 1
                assert page.locator("#latency svg").count() == 1
                ok_rows = [r for r in report["rows"] if r["status"] == "ok"]
                assert page.locator("#confusion figure.confusion svg").count() == len(ok_rows)
                items = page.locator("#gallery figure.gallery-item")
                assert items.count() == len(gallery["entries"]) > 0
                assert page.locator("#gallery figure.gallery-item img").first.evaluate("i => i.naturalWidth") > 0
                assert gallery["entries"][0]["id"] in items.first.inner_text()
                assert page.locator("#provenance").inner_text().count(report["config_sha256"]) >= 1


def test_a_target_that_fails_to_build_fails_loudly_and_the_others_are_reported(project, monkeypatch):
    from edgepipe.targets.tensorrt.builder import TensorRtTarget

    def explode(self, *args, **kwargs):
        raise RuntimeError("simulated builder crash")

    monkeypatch.setattr(TensorRtTarget, "build", explode)
    runner = CliRunner()
    # A code change is not a build input: the stage must be forced to see the patched builder.
    result = runner.invoke(cli, ["build", str(project / "build.yaml"), "--force", "quantize"])
    assert result.exit_code == 3, result.output
    assert "tensorrt int8 failed to build: RuntimeError: simulated builder crash" in result.stderr
    report = json.loads((project / "out" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["tensorrt-int8"]["status"] == "failed" and "simulated builder crash" in rows["tensorrt-int8"]["reason"]
    assert rows["onnxruntime-fp32"]["status"] == rows["onnxruntime-int8"]["status"] == "ok"
    assert any(g["artifact"] == "tensorrt-int8" and g["gate"] == "build" and g["status"] == "failed" for g in report["gates"])
