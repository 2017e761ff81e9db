"""Report stage: gates on the verify results (and on the baseline release's, when set), report.json
(schema below), report.md, report.html (pipeline/html_report.py), a console table and optional
JUnit XML.

report.json is a pipeline/records.py Report (schema "edgepipe-report/1"; JSON schema in
docs/schemas/report.json): the verify rows, the gates on them, passed / exit_code.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.table import Table

from edgepipe.core.console import console
from edgepipe.core.files import atomic_output, write_json
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import Manifest
from edgepipe.pipeline.records import REPORT_SCHEMA, Report, checked, read_report

EXIT_GATE_FAILED = 3


def evaluate_gates(results: dict, cfg: BuildConfig) -> list[dict]:
    overrides = {t.name: t.gates for t in cfg.targets}
    ref = next(r for r in results["rows"] if r["name"] == results["reference"])
    gates = []
    for row in results["rows"]:
        if row["name"] == results["reference"]:
            continue
        if row["status"] != "ok":
            gates.append({"artifact": row["name"], "gate": "build", "status": "skipped" if row["status"] == "skipped" else "failed",
                          "limit": None, "value": None, "reason": row["reason"]})
            continue
        g = overrides[row["target"]].over(cfg.gates) if row["target"] in overrides else cfg.gates
        drop = ref["accuracy"] - row["accuracy"]
        checks = [("max_accuracy_drop", g.max_accuracy_drop, drop, drop <= g.max_accuracy_drop + 1e-12),
                  ("min_agreement", g.min_agreement, row["agreement"], row["agreement"] >= g.min_agreement)]
        if g.max_latency_ms is not None:
            p50 = row["latency_ms"]["p50"]
            checks.append(("max_latency_ms", g.max_latency_ms, p50, p50 <= g.max_latency_ms))
        for name, limit, value, ok in checks:
            reason = None if ok else f"{name}: {value:.4g} vs limit {limit:.4g}"
            gates.append({"artifact": row["name"], "gate": name, "status": "passed" if ok else "failed",
                          "limit": limit, "value": value, "reason": reason})
    return gates


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


def _signed_pt(v) -> str:
    return "-" if v is None else f"{v * 100:+.2f}"


def table_rows(report: dict) -> list[list[str]]:
    failed = {g["artifact"] for g in report["gates"] if g["status"] == "failed"}
    out = []
    for r in report["rows"]:
        ok = r["status"] == "ok"
        is_ref = r["name"] == report["reference"]
        gate = "reference" if is_ref else (
            "FAIL" if r["name"] in failed else ("pass" if ok else r["status"]))
        lat = r.get("latency_ms") or {}
        out.append([r["name"], r["status"] if ok else f"{r['status']}: {r['reason']}",
                    _pct(r.get("accuracy")), _signed_pt(r.get("accuracy_delta")), _pct(r.get("agreement")),
                    f"{r['vs_parent']['parent']} {_signed_pt(r['vs_parent']['accuracy_delta'])}" if ok and not is_ref else "-",
                    *(f"{lat[k]:.2f}" if lat else "-" for k in ("p50", "p95", "p99")),
                    f"{r['throughput']['images_per_s']:.0f}" if ok else "-",
                    f"{r['size_bytes'] / 1e6:.1f}", gate])
    return out


HEADERS = ["artifact", "status", "accuracy", "Δ pt vs float", "agreement", "vs parent (Δ pt)",
           "p50 ms", "p95 ms", "p99 ms", "img/s", "MB", "gates"]


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# edgepipe report: {report['name']}", "",
             f"Test split: {report['test_images']} images. Reference: {report['reference']}. "
             f"Latency: batch 1, {m['threads']} threads, {m['cpu']}."
             + (f" Backbone: {describe_weights(report['weights'])}." if report.get("weights") else "")
             + (f" Training augmentation: {report['augmentation']}." if report.get("augmentation") else ""), "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table_rows(report)]
    if report.get("domains"):
        names = list(report["domains"][0]["accuracy"])
        lines += ["", "Accuracy on each part of the test split (field: the labelled field images):", "",
                  "| test images | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        lines += [f"| {d['domain']} ({d['images']}) | " + " | ".join(_pct(d["accuracy"].get(n)) for n in names) + " |"
                  for d in report["domains"]]
    if report.get("adapt"):
        a = report["adapt"]
        lines += ["", f"AdaBN ran before export: {a['layers']} batch-norm layers re-estimated on {a['images']} "
                      f"unlabelled field image(s) from `{a['folder']}` at strength {a.get('strength', 1.0):g} "
                      f"(mean shift {a['mean_shift']:.3f} sd)."]
    if report.get("baseline"):
        b = report["baseline"]
        lines += ["", f"Baseline: {b['name']} ({b['created']}), compared on {b['compared_on']}"
                      + (f" and on {b['field_compared_on']}" if b.get("field_compared_on") else "") + "."]
    failures = [g for g in report["gates"] if g["status"] == "failed"]
    lines += ["", "**All gates passed.**" if not failures else "**Gates failed:**"]
    lines += [f"- {g['artifact']}: {g['reason']}" for g in failures]
    notes = [f"- {r['name']}: {r['proxy']}" for r in report["rows"] if r.get("proxy")]
    notes += [f"- {r['name']}: runs with {r['runtime']}" for r in report["rows"] if r.get("runtime")]
    for r in report["rows"]:
        details = r.get("details") or {}
        if details.get("weight_rounding") == "data_aware":
            notes.append(f"- {r['name']}: int8 weights rounded data-aware on calibration images "
                         "(calibration/weight_rounding.json)")
        fb = details.get("fallback")
        if fb:
            first = fb["steps"][0]
            last = next(st for st in fb["steps"] if st["float_layers"] == fb["chosen_step"])
            kept = ", ".join(fb["kept_float"]) or "none"
            notes.append(f"- {r['name']}: {len(fb['kept_float'])} layer(s) kept in float ({kept}); val agreement "
                         f"{first['agreement']:.2%} -> {last['agreement']:.2%}, latency cost "
                         f"{fb['latency_cost_ms']:+.2f} ms p50" + ("" if fb["goal_met_on_val"] else "; goal NOT met on val"))
    if notes:
        lines += ["", "Notes:"] + notes
    return "\n".join(lines) + "\n"


def print_table(report: dict) -> None:
    table = Table(title=f"edgepipe {report['name']}: {report['test_images']} test images, "
                        f"batch-1 latency on {report['machine']['threads']} threads")
    for h in HEADERS:
        table.add_column(h, overflow="fold")
    for row in table_rows(report):
        style = "red" if row[-1] == "FAIL" else ("yellow" if row[-1] in ("skipped", "failed") else None)
        table.add_row(*row, style=style)
    console.print(table)


def write_junit(path: Path, report: dict) -> Path:
    gates = report["gates"]
    suite = ET.Element("testsuite", name=f"edgepipe.{report['name']}", tests=str(len(gates)),
                       failures=str(sum(g["status"] == "failed" for g in gates)),
                       skipped=str(sum(g["status"] == "skipped" for g in gates)))
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname=f"edgepipe.{g['artifact']}", name=g["gate"])
        if g["status"] == "failed":
            ET.SubElement(case, "failure", message=g["reason"] or "failed")
        elif g["status"] == "skipped":
            ET.SubElement(case, "skipped", message=g["reason"] or "skipped")
    root = ET.Element("testsuites")
    root.append(suite)
    with atomic_output(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    return path


def run_report(cfg: BuildConfig, results: dict, manifest: Manifest, junit: Path | None = None) -> int:
    """Write the reports and return the build's exit code: 0 all gates pass, 3 a gate failed."""
    from edgepipe.pipeline.baseline import baseline_gates, load_baseline

    gates = evaluate_gates(results, cfg)
    report = {"schema": REPORT_SCHEMA, "name": cfg.name,
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "config_sha256": cfg.sha256(), "machine": results["machine"], "test_images": results["test_images"],
              "reference": results["reference"], "passed": True, "exit_code": 0,
              "rows": results["rows"], "gates": gates, "augmentation": _augmentation(manifest),
              "weights": _weights(manifest), "test_set": results.get("test_set")}
    report["domains"] = domain_accuracy(report)
    report["adapt"] = _adapt(manifest)
    baseline = load_baseline(cfg)
    if baseline is not None:
        field = manifest.read_json("previous", "field_predictions") if _recorded(manifest, "previous") else None
        more, report["baseline"] = baseline_gates(report, baseline, cfg.gates.baseline, field,
                                                  cfg.update.min_field_gain if cfg.update is not None else 0.0)
        gates += more
    passed = not any(g["status"] == "failed" for g in gates)
    report |= {"passed": passed, "exit_code": 0 if passed else EXIT_GATE_FAILED}
    out = cfg.output_dir
    outputs = {"report_json": write_json(out / "report.json", checked(Report, report, "report.json"))}
    with atomic_output(out / "report.md") as tmp:
        tmp.write_text(render_markdown(report))
    outputs["report_md"] = out / "report.md"
    outputs["report_html"] = _write_html(report, manifest, out / "report.html")
    if junit is not None:
        junit = write_junit(junit.resolve(), report)
        if junit.is_relative_to(out):  # the manifest lists files inside the output dir only
            outputs["junit"] = junit
    manifest.record_stage("report", outputs, {"passed": passed, "failed_gates": [g for g in gates if g["status"] == "failed"]})
    _announce(report)
    return report["exit_code"]


def _write_html(report: dict, manifest: Manifest, path: Path) -> Path:
    from edgepipe.pipeline.html_report import render_html
    from edgepipe.pipeline.report_inputs import report_context

    with atomic_output(path) as tmp:
        tmp.write_text(render_html(report_context(report, manifest)), encoding="utf-8")
    return path


def _recorded(manifest: Manifest, stage: str) -> bool:
    return bool((manifest.data["stages"].get(stage) or {}).get("outputs"))


def domain_accuracy(report: dict) -> list[dict] | None:
    """Per row, accuracy on the dataset's test images and on the field's (None without field images)."""
    from edgepipe.pipeline.baseline import domain_report

    if not any(t.get("domain") == "field" for t in report.get("test_set") or []):
        return None
    out = []
    for domain in ("dataset", "field"):
        part = domain_report(report, domain)
        if part is not None:
            out.append({"domain": domain, "images": part["test_images"],
                        "accuracy": {r["name"]: r["accuracy"] for r in part["rows"] if r["status"] == "ok"}})
    return out


def _adapt(manifest: Manifest) -> dict | None:
    if not _recorded(manifest, "adapt"):
        return None
    m = manifest.data["stages"]["adapt"]["metrics"]
    return {**{k: m[k] for k in ("method", "images", "folder", "layers", "mean_shift")},
            "strength": m.get("strength", 1.0)}  # recorded since strength exists; 1 before


def _augmentation(manifest: Manifest) -> str | None:
    """The fine-tune's augmentation in words, from the recipe it recorded (None for an older build)."""
    from edgepipe.pipeline.config import AugmentConfig

    recipe = (manifest.data["stages"].get("finetune") or {}).get("recipe") or {}
    try:
        return AugmentConfig(**recipe["augment"]).describe()
    except (KeyError, TypeError, ValueError):
        return None


def _weights(manifest: Manifest) -> dict | None:
    """Backbone and weights as the fine-tune recorded them (None for a build before `origin` was kept)."""
    w = manifest.data.get("weights") or {}
    return w if {"backbone", "origin", "source", "sha256"} <= set(w) else None


def describe_weights(w: dict) -> str:
    if w["origin"] == "previous release":
        return f"{w['backbone']}, started from the previous release's model {w['source']} (sha256 {w['sha256'][:16]}…)"
    if w["origin"] == "none":
        return f"{w['backbone']}, random initialisation (no ImageNet weights)"
    return f"{w['backbone']}, ImageNet weights from {w['origin']} {w['source']} (sha256 {w['sha256'][:16]}…)"


def replay_report(manifest: Manifest, junit: Path | None = None) -> int:
    """The report stage is up to date: show the stored report again, write JUnit if asked, and
    return its exit code, so an incremental build exits as the full one did."""
    report = read_report(manifest)
    if junit is not None:
        write_junit(junit.resolve(), report)
    _announce(report)
    return report["exit_code"]


def _announce(report: dict) -> None:
    print_table(report)
    if report.get("weights"):
        console.print(f"backbone: {describe_weights(report['weights'])}")
    if report.get("augmentation"):
        console.print(f"training augmentation: {report['augmentation']}")
    if report.get("adapt"):
        a = report["adapt"]
        console.print(f"AdaBN: {a['layers']} batch-norm layers re-estimated on {a['images']} unlabelled field "
                      f"image(s) from {a['folder']} at strength {a.get('strength', 1.0):g}")
    for d in report.get("domains") or []:
        console.print(f"{d['domain']} test images ({d['images']}): "
                      + ", ".join(f"{k} {v:.2%}" for k, v in d["accuracy"].items()))
    for g in report["gates"]:
        if g["status"] == "failed":
            console.print(f"[bold red]gate failed: {g['artifact']}: {g['reason']}")
    console.print("[bold green]all gates passed" if report["passed"]
                  else f"[bold red]build failed its gates (exit {EXIT_GATE_FAILED})")
