"""report.html: every section, one chart per measured artifact, self-contained, escaped, and an older
build's records still render. Built from a hand-made report.json that validates as a Report."""

from __future__ import annotations

import base64
import copy
import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from edgepipe.pipeline.html_report import ReportContext, render_html
from edgepipe.pipeline.records import Gallery, Report, checked
from edgepipe.pipeline.report_charts import Point, confusion_svg, pareto_front

HOSTILE = "<script>alert(1)</script>"
CLASSES = ["functional", "defective", HOSTILE]
SECTIONS = ["verdict", "artifacts", "tradeoff", "confusion", "training", "latency", "quantization", "gallery",
            "provenance"]


def _row(name, precision, accuracy, p50, status="ok", proxy=None, details=None, runtime=None):
    row = {"name": name, "target": name.split("-")[0], "precision": precision, "status": status,
           "reason": None if status == "ok" else "tensorrt not installed", "proxy": proxy,
           "details": details or {}, "size_bytes": 3_800_000}
    if status != "ok":
        return row
    return row | {
        "accuracy": accuracy, "macro_f1": accuracy - 0.02, "accuracy_delta": accuracy - 0.86, "agreement": 0.98,
        "per_class_recall": {"functional": 0.9, "defective": 0.7, HOSTILE: None},
        "per_class_precision": {"functional": 0.88, "defective": 0.75, HOSTILE: None},
        "per_class_f1": {"functional": 0.89, "defective": 0.72, HOSTILE: None},
        "confusion": [[40, 4, 1], [3, 7, 0], [0, 0, 0]],
        "vs_parent": {"parent": "torch-fp32", "accuracy_delta": accuracy - 0.86, "agreement": 0.98,
                      "max_abs_logit_diff": 0.1},
        "latency_ms": {"p50": p50, "p95": p50 * 1.2, "p99": p50 * 1.4, "mean": p50 * 1.05, "runs": 100},
        "throughput": {"batch": 8, "images_per_s": 1000 / p50}, "runtime": runtime}


FALLBACK = {"kept_float": ["/stem/conv/Conv"], "chosen_step": 1, "goal_met_on_val": False, "latency_cost_ms": 0.21,
            "goal": {"val_agreement": 0.99, "val_max_accuracy_drop": 0.005},
            "steps": [{"float_layers": 0, "agreement": 0.97, "accuracy_drop": 0.012, "logit_mse": 0.2, "p50_ms": 3.1},
                      {"float_layers": 1, "agreement": 0.985, "accuracy_drop": 0.004, "logit_mse": 0.1, "p50_ms": 3.3}]}
ROWS = [_row("torch-fp32", "fp32", 0.86, 25.0),
        _row("onnxruntime-fp32", "fp32", 0.86, 6.6),
        _row("onnxruntime-int8", "int8", 0.85, 3.3, details={"fallback": FALLBACK, "weight_rounding": "data_aware"}),
        _row("openvino-fp16", "fp16", 0.849, 5.3, runtime="CPU inference precision f32"),
        _row("openvino-int8", "int8", 0.855, 3.4),  # dominates nothing at 3.3 ms but beats it on accuracy
        _row("tensorrt-int8", "int8", None, None, status="skipped"),
        _row("tensorrt-int8-proxy", "int8", 0.99, 1.0, proxy="ONNX Runtime QDQ stand-in for TensorRT int8")]
FRONT = ["onnxruntime-int8", "openvino-int8", "onnxruntime-fp32"]  # proxy left out; torch / fp16 dominated


def _gate(artifact, gate, status, value=None, limit=None, reason=None):
    return {"artifact": artifact, "gate": gate, "status": status, "limit": limit, "value": value, "reason": reason}


def make_report(old: bool = False) -> dict:
    report = {
        "schema": "edgepipe-report/1", "name": f"solar {HOSTILE}", "created": "2026-11-23T10:00:00+00:00",
        "config_sha256": "c" * 64, "test_images": 55, "reference": "torch-fp32", "passed": False, "exit_code": 3,
        "machine": {"cpu": "AMD EPYC", "logical_cpus": 2, "threads": 2, "platform": "Linux"},
        "rows": copy.deepcopy(ROWS),
        "gates": [_gate("onnxruntime-int8", "max_accuracy_drop", "passed", 0.01, 0.01),
                  _gate("openvino-int8", "min_agreement", "failed", 0.95, 0.98, "min_agreement: 0.95 vs limit 0.98"),
                  _gate("tensorrt-int8", "build", "skipped", reason="tensorrt not installed"),
                  _gate("onnxruntime-int8", "baseline_accuracy_drop", "passed", 0.002, 0.005),
                  _gate("openvino-fp16", "baseline_latency_increase", "failed", 0.4, 0.1,
                        "baseline_latency_increase: 0.4 vs limit 0.1")],
        "weights": {"backbone": "tf_efficientnet_lite0", "origin": "package", "source": "/site/lite0.pth",
                    "sha256": "d" * 64},
        "test_set": [{"id": f"images/{i}.png", "sha256": "e" * 64, "label": "functional"} for i in range(55)],
        "baseline": {"report": "dist/v1/report.json", "sha256": "f" * 64, "name": "solar-v1",
                     "created": "2026-10-01T00:00:00+00:00", "compared_on": "the same test split"}}
    if old:  # a build from before precision / F1, the test set, the baseline and the weights were recorded
        for r in report["rows"]:
            r.pop("per_class_precision", None)
            r.pop("per_class_f1", None)
        for k in ("test_set", "baseline", "weights"):
            report.pop(k)
        report["gates"] = [g for g in report["gates"] if not g["gate"].startswith("baseline")]
    return checked(Report, report, "report.json")


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (seed * 10 % 256, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


def make_gallery(n: int) -> tuple[dict, dict[str, bytes]]:
    def answer(name, precision, cls, confidence):
        return {"name": name, "precision": precision, "class": cls, "confidence": confidence}

    entries = [{"index": i, "id": f"cells/{HOSTILE}/{i}.png", "label": "defective",
                "kind": "int8 disagrees" if i % 2 else "float error",
                "float": answer("torch-fp32", "fp32", "defective" if i % 2 else "functional", 0.9123),
                "artifacts": [answer("onnxruntime-int8", "int8", "functional", 0.6789),
                              answer("openvino-int8", "int8", "defective", 0.5555)],
                "png": f"explain/{i}.png"} for i in range(n)]
    gallery = {"schema": "edgepipe-explain/1", "method": "Grad-CAM of the float model's class", "layer": "bn2",
               "reference": "torch-fp32", "limit": 24, "found": {"int8 disagrees": 20, "float error": 10},
               "shown": {"int8 disagrees": n // 2, "float error": n - n // 2},
               "reason": None if n else "no test image where an int8 artifact disagrees or the float model errs",
               "entries": entries}
    if not n:
        gallery["found"] = {"int8 disagrees": 0, "float error": 0}
    return checked(Gallery, gallery, "gallery.json"), {e["png"]: png(e["index"]) for e in entries}


def make_context(old: bool = False, gallery_size: int = 4) -> ReportContext:
    curve = [{"phase": "warmup", "epoch": e, "train_loss": 0.6 - 0.02 * e, "val_accuracy": 0.8 + 0.01 * e}
             for e in (1, 2, 3)]
    curve += [{"phase": "finetune", "epoch": e, "train_loss": 0.5 - 0.05 * e, "val_accuracy": 0.84 + 0.01 * (e % 3),
               "epoch_s": 100.0} for e in (1, 2, 3, 4)]
    gallery, pngs = make_gallery(gallery_size)
    provenance = {"config": {"name": "solar", "dataset": {"root": "data/<b>cells</b>"},
                             "targets": [{"name": "onnxruntime"}]},
                  "config_sha256": "c" * 64,
                  "dataset": {"sha256": "a" * 64, "split_sha256": "b" * 64, "classes": CLASSES,
                              "sizes": {"train": 100, "val": 20, "test": 55},
                              "per_class": {s: {c: 5 for c in CLASSES} for s in ("train", "val", "test")}},
                  "weights": None, "tool_versions": {"edgepipe": "0.1.0", "onnxruntime": "1.20"},
                  "machine": {"cpu": "AMD EPYC", "threads": 2}}
    if old:
        return ReportContext(make_report(old=True), [], None, None, None, {}, provenance | {"dataset": {}})
    return ReportContext(make_report(), curve,
                         {"val_accuracy": 0.86, "test_accuracy": 0.85, "best_epoch": 2, "epochs_run": 4,
                          "wall_s": 400.0, "budget_minutes": 10, "stopped": "budget"},
                         {"images": 300, "method": "stratified random", "sha256": "9" * 64}, gallery, pngs, provenance)


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(make_context())


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def sections(html: str) -> dict[str, str]:
    """section id -> its HTML (sections do not nest)."""
    return dict(re.findall(r'<section id="([a-z]+)">(.*?)</section>', html, flags=re.S))


def test_every_section_in_order_with_its_chart(page):
    assert [a["id"] for t, a in tags(page) if t == "section"] == SECTIONS
    s = sections(page)
    for name in ("tradeoff", "training", "latency"):
        assert s[name].count("<svg ") == 1, name
    assert "<title>edgepipe report: solar &lt;script&gt;" in page


def test_one_confusion_figure_with_a_chart_per_measured_artifact(page):
    figures = re.findall(r'<figure class="confusion">(.*?)</figure>', sections(page)["confusion"], flags=re.S)
    assert len(figures) == sum(r["status"] == "ok" for r in ROWS) == 6
    assert all(f.count("<svg ") == 1 for f in figures)
    # counts in the cells, class names on the axes (escaped by matplotlib's SVG writer)
    assert ">40</text>" in figures[0] and "&lt;script&gt;" in figures[0]


def test_ids_are_unique_though_every_chart_comes_from_matplotlib(page):
    ids = [a["id"] for _, a in tags(page) if "id" in a]
    assert len(ids) == len(set(ids)), [i for i in set(ids) if ids.count(i) > 1][:5]
    refs = set(re.findall(r'(?:xlink:href="#|url\(#)([^")]+)', page))
    assert refs and refs <= set(ids)  # each chart's references still point into that chart


def test_pareto_front_is_exactly_the_points_nothing_beats():
    p = [Point("a", 1.0, 0.80, True, False), Point("b", 2.0, 0.90, True, False), Point("c", 2.0, 0.85, False, False),
         Point("d", 3.0, 0.90, False, False), Point("e", 5.0, 0.95, False, False), Point("f", 0.5, 0.70, True, False),
         Point("g", 5.0, 0.95, False, False), Point("h", 4.0, 0.60, True, False)]
    # c: same latency as b, less accurate; d: as accurate as b, slower; h: beaten by a; e and g tie
    assert [q.name for q in pareto_front(p)] == ["f", "a", "b", "e", "g"]
    assert pareto_front([]) == []
    for q in p:  # the definition, point by point
        beaten = any(o.latency_ms <= q.latency_ms and o.accuracy >= q.accuracy and o[1:3] != q[1:3] for o in p)
        assert (q in pareto_front(p)) != beaten


def test_the_page_names_the_front_and_leaves_the_proxy_off_it(page):
    front = re.search(r'<p class="front">(.*?)</p>', page, flags=re.S).group(1)
    assert re.findall(r"<strong>(.*?)</strong>", front) == FRONT
    assert "proxy (stand-in backend)" in sections(page)["tradeoff"]  # the legend marks it


def test_self_contained_no_script_no_remote_url(page):
    for tag, attrs in tags(page):
        assert tag not in ("script", "link", "iframe", "object"), tag
        for key in ("src", "href", "xlink:href"):
            assert not re.match(r"\s*(https?:)?//", attrs.get(key) or ""), (tag, attrs[key][:80])
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", page)


def test_user_names_are_shown_as_text(page):
    assert HOSTILE not in page
    assert "<b>cells</b>" not in page  # config values too
    s = sections(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in s["confusion"] and "data/&lt;b&gt;cells" in s["provenance"]


def test_verdict_lists_failed_gates_skips_and_the_baseline(page):
    v = sections(page)["verdict"]
    assert "exit code 3" in v and "2 gate(s) failed" in v
    failed = re.search(r'<ul class="failed-gates">(.*?)</ul>', v, flags=re.S).group(1)
    assert "openvino-int8" in failed and "min_agreement: 0.95 vs limit 0.98" in failed
    assert "baseline_latency_increase: 0.4 vs limit 0.1" in failed
    assert "tensorrt not installed" in v and "skipped" in v
    assert "solar-v1" in v and "the same test split" in v


def test_artifact_table_has_the_markdown_columns(page):
    from edgepipe.pipeline.report import HEADERS

    table = sections(page)["artifacts"]
    assert re.findall(r"<th>(.*?)</th>", table) == HEADERS
    assert table.count("<tr class=") == len(ROWS) and '<tr class="fail">' in table
    assert "skipped: tensorrt not installed" in table


def test_per_class_table_quantization_and_training(page):
    s = sections(page)
    assert "88.0%" in s["confusion"] and "89.0%" in s["confusion"] and "n/a" in s["confusion"]
    q = s["quantization"]
    assert "<strong>300</strong> images, stratified random" in q
    assert "/stem/conv/Conv" in q and "+0.21 ms" in q and "goal NOT met" in q
    assert "ONNX Runtime QDQ stand-in for TensorRT int8" in q and "CPU inference precision f32" in q
    assert "data-aware" in q
    assert "best: val" in s["training"] and "w1</text>" in s["training"]


def test_gallery_shows_each_png_and_the_confidences():
    ctx = make_context(gallery_size=5)
    g = sections(render_html(ctx))["gallery"]
    figures = re.findall(r'<figure class="gallery-item">(.*?)</figure>', g, flags=re.S)
    assert len(figures) == 5
    for e, f in zip(ctx.gallery["entries"], figures):
        src = re.search(r'<img src="data:image/png;base64,([^"]+)"', f).group(1)
        assert base64.b64decode(src) == ctx.gallery_png[e["png"]]
        assert f"cells/&lt;script&gt;alert(1)&lt;/script&gt;/{e['index']}.png" in f
        assert "91.2%" in f and "67.9%" in f and "55.5%" in f and e["kind"] in f
    assert "Found 20 int8 disagrees, 10 float error" in g and "showing 5 image(s)" in g and "Grad-CAM" in g


def test_an_older_build_renders_with_gaps_named():
    html = render_html(make_context(old=True))
    s = sections(html)
    assert list(s) == SECTIONS
    assert s["confusion"].count('<figure class="confusion">') == 6
    # precision and F1 unknown, recall recorded
    cells = r'<td class="num">n/a</td>\s*<td class="num">90.0%</td>\s*<td class="num">n/a</td>'
    assert re.search(cells, s["confusion"])
    assert "No gallery: this build is older" in s["gallery"] and "<img" not in s["gallery"]
    assert "No training curve" in s["training"] and "No calibration set recorded" in s["quantization"]
    assert "All gates passed" not in s["verdict"] and "Compared with" not in s["verdict"]


def test_an_empty_gallery_says_why():
    g = sections(render_html(make_context(gallery_size=0)))["gallery"]
    assert "No gallery: no test image where an int8 artifact disagrees or the float model errs." in g
    assert "showing 0 image(s)" in g and "<img" not in g


def test_a_class_name_with_dollar_signs_is_text_not_tex():
    # matplotlib would parse "$...$" as mathtext and fail on this one ("\frac" without its arguments)
    svg = confusion_svg([[1, 0], [0, 1]], [r"$\frac$", "ok"], "k", "x")
    assert r">$\frac$</text>" in svg
