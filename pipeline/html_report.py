"""report.html: the build's report as one self-contained page (charts as inline SVG, gallery images
as base64 PNG, CSS inline, no script), readable offline on a laptop or a phone.

render_html turns the records the build already wrote (report.json, the fine-tune's curve and
metrics, the calibration set, the explain gallery, the provenance) into the page; the template is
pipeline/templates/report.html.j2, shipped in the wheel as package data. Every value from the
records is escaped by jinja2's autoescape: class and artifact names come from user folders.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass

import jinja2
import yaml
from markupsafe import Markup

from edgepipe.pipeline import report_charts as charts
from edgepipe.pipeline.records import Report
from edgepipe.pipeline.report import HEADERS, describe_weights, table_rows


@dataclass
class ReportContext:
    report: dict  # report.json (pipeline/records.py: Report)
    curve: list[dict]  # the fine-tune's curve.json, warm-up epochs then fine-tune epochs
    finetune: dict | None  # the fine-tune's metrics.json
    calibration: dict | None  # {"images", "method", "sha256"}
    gallery: dict | None  # explain/gallery.json (records.Gallery), None when there is none
    gallery_png: dict[str, bytes]  # a gallery entry's "png" path -> its bytes
    provenance: dict  # {"config", "config_sha256", "dataset", "weights", "tool_versions", "machine"}


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("edgepipe.pipeline", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, digits=2: "n/a" if v is None else f"{v:.{digits}%}"
    return env.get_template("report.html.j2")


def render_html(ctx: ReportContext) -> str:
    """The page, as one string. ctx.report must validate as a Report (read_report checks it);
    ctx.gallery is a records.Gallery (read_gallery)."""
    # through the record's model: every optional field is there (None where an older build lacks it)
    report = Report.model_validate(ctx.report).model_dump(by_alias=True)
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    classes = _classes(ctx)
    points = [charts.Point(r["name"], r["latency_ms"]["p50"], r["accuracy"], r["precision"].startswith("int"),
                           r.get("proxy") is not None) for r in ok]
    # a proxy's latency is its stand-in's (e.g. ONNX Runtime for TensorRT): not a point the target can reach
    front = charts.pareto_front([p for p in points if not p.proxy])
    failed = {g["artifact"] for g in report["gates"] if g["status"] == "failed"}
    return _template().render(
        report=report, headers=HEADERS, table=list(zip(table_rows(report), report["rows"])), failed=failed,
        failed_gates=[g for g in report["gates"] if g["status"] == "failed"],
        tradeoff=Markup(charts.tradeoff_svg(points, front)) if points else None, front=front,
        proxies=[r for r in report["rows"] if r.get("proxy")],
        confusion=[_confusion(i, r, classes) for i, r in enumerate(ok)],
        training=Markup(charts.training_svg(ctx.curve, (ctx.finetune or {}).get("best_epoch"))) if ctx.curve else None,
        finetune=ctx.finetune, latency=Markup(charts.latency_svg(ok)) if ok else None,
        calibration=ctx.calibration,
        fallbacks=[_fallback(r) for r in report["rows"] if (r.get("details") or {}).get("fallback")],
        notes=_notes(report), gallery=_gallery(ctx), provenance=_provenance(ctx),
        weights=describe_weights(report["weights"]) if report.get("weights") else None)


def _classes(ctx: ReportContext) -> list[str]:
    """The class order of the confusion matrices: the dataset's, else the per-class metrics' keys
    (written in the same order)."""
    named = (ctx.provenance.get("dataset") or {}).get("classes")
    if named:
        return list(named)
    return next((list(r["per_class_recall"]) for r in ctx.report["rows"] if r.get("per_class_recall")), [])


def _confusion(i: int, row: dict, classes: list[str]) -> dict:
    matrix = row.get("confusion")
    names = classes if matrix and len(classes) == len(matrix) else [str(k) for k in range(len(matrix or []))]
    metrics = ("per_class_precision", "per_class_recall", "per_class_f1")
    table = [(c, *((row.get(m) or {}).get(c) for m in metrics)) for c in names]
    svg = charts.confusion_svg(matrix, names, str(i), row["name"]) if matrix else None
    return {"row": row, "svg": Markup(svg) if svg else None, "table": table}


def _fallback(row: dict) -> dict:
    fb = row["details"]["fallback"]
    return {"name": row["name"], "kept_float": fb["kept_float"], "steps": fb["steps"], "chosen": fb["chosen_step"],
            "latency_cost_ms": fb["latency_cost_ms"], "goal_met": fb["goal_met_on_val"], "goal": fb.get("goal")}


def _notes(report: dict) -> list[tuple[str, str]]:
    """(artifact, note): what render_markdown's notes say besides the fallback, which has its own table."""
    notes = [(r["name"], f"runs with {r['runtime']}") for r in report["rows"] if r.get("runtime")]
    notes += [(r["name"], "int8 weights rounded data-aware on calibration images (calibration/weight_rounding.json)")
              for r in report["rows"] if (r.get("details") or {}).get("weight_rounding") == "data_aware"]
    return notes


def gallery_item(entry: dict, pngs: dict[str, bytes]) -> dict:
    """One explain/gallery.json entry (records.GalleryEntry) as the template shows it: the only
    place that reads an entry's fields."""
    png = pngs.get(entry["png"])
    return {"index": entry["index"], "id": entry["id"], "label": entry["label"], "kind": entry["kind"],
            "float": (entry["float"]["name"], entry["float"]["class"], entry["float"]["confidence"]),
            "artifacts": [(a["name"], a["class"], a["confidence"]) for a in entry["artifacts"]],
            "src": None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")}


def _gallery(ctx: ReportContext) -> dict:
    g = ctx.gallery
    if g is None:
        why = ("No gallery: this build is older than the per-image predictions the gallery is picked from."
               if not ctx.report.get("test_set") else "No gallery was written for this build.")
        return {"items": [], "why": why, "found": {}, "shown": {}, "method": None, "layer": None}
    items = [gallery_item(e, ctx.gallery_png) for e in g["entries"]]
    why = g.get("reason") or (None if items else "no test image where an int8 artifact disagrees with the float "
                              "model, and none the float model gets wrong")
    if why:  # the record's reason is a phrase: the page shows a sentence
        why = ("" if items else "No gallery: ") + why.rstrip(".") + "."
    return {"items": items, "why": why, "found": g["found"], "shown": g.get("shown") or {}, "method": g["method"],
            "layer": g["layer"]}


def _provenance(ctx: ReportContext) -> dict:
    p = ctx.provenance
    # through JSON first: safe_dump refuses anything but plain types (a Path, a datetime)
    config = json.loads(json.dumps(p.get("config") or {}, default=str))
    sizes = (p.get("dataset") or {}).get("sizes") or {}
    return {"config_yaml": yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
            "config_sha256": p.get("config_sha256") or ctx.report["config_sha256"],
            "dataset": p.get("dataset") or {}, "sizes": ", ".join(f"{k} {v}" for k, v in sizes.items()),
            "weights": p.get("weights") or ctx.report.get("weights"),
            "tool_versions": p.get("tool_versions") or {}, "machine": p.get("machine") or ctx.report["machine"]}
