"""Explain stage: the report's gallery. Test images where an int8 artifact disagrees with the float
model, then the float model's own errors, each shown with the float model's Grad-CAM heat map
and every model's answer.

It reads verify's per-image predictions (the order of results["test_set"]) rather than running
the artifacts again, so the gallery shows exactly the answers the gates were computed from. The
heat map is the float model's, for its own top-1 class: where the reference looked when it
decided, which is what a reviewer compares an int8 flip or a float error against.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgepipe.core.console import console
from edgepipe.core.errors import MissingArtifactError
from edgepipe.core.files import atomic_output, write_json
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.manifest import Manifest, float_checkpoint
from edgepipe.pipeline.records import EXPLAIN_SCHEMA, Gallery, checked, read_results

DISAGREES, ERROR = "int8 disagrees", "float error"
METHOD = ("Grad-CAM of the float model (captum LayerGradCam) for the float model's top-1 class as verify "
          "recorded it; the map is ReLU'd, upsampled bilinearly to the input and scaled to its maximum")
_FIX = "rerun `edgepipe verify` (or `edgepipe build`) to rewrite it"
_CHUNK = 64  # images normalized and explained at a time: report.gallery may be 500 (300 MB as float at 224 px)


def select(results: dict, limit: int) -> tuple[list[tuple[int, str]], dict[str, int], str | None]:
    """([(test index, kind)] to show, found per kind, why the gallery is empty or short).

    First the images where some int8 artifact that ran disagrees with the float model: most
    disagreeing artifacts first, then the float model's confidence, highest first (a flip of a
    confident answer is the alarming kind). Then the float model's own errors, confidently wrong
    first. An image of both kinds appears once, in the first group."""
    rows, test_set = results["rows"], results.get("test_set")
    ref = next((r for r in rows if r["name"] == results["reference"]), None)
    if not test_set or ref is None or ref.get("predictions") is None:
        return [], {}, "these verify results are older than per-image predictions: rerun `edgepipe verify`"
    n, pred, conf = len(test_set), np.asarray(ref["predictions"]), np.asarray(ref["confidence"])
    int8 = [r for r in rows if r is not ref and r["precision"] == "int8" and r["status"] == "ok"
            and r.get("predictions") is not None]
    for r in (ref, *int8):
        if len(r["predictions"]) != n or len(r.get("confidence") or []) != n:
            raise MissingArtifactError(f"verify/results.json: row {r['name']} has predictions for "
                                       f"{len(r['predictions'])} of {n} test images", _FIX)
    try:
        labels = np.asarray([results["classes"].index(t["label"]) for t in test_set])
    except ValueError:
        raise MissingArtifactError("verify/results.json: a test image's label is not one of its classes",
                                   _FIX) from None
    flips = sum((np.asarray(r["predictions"]) != pred).astype(int) for r in int8) if int8 else np.zeros(n, int)
    disagree = sorted(np.flatnonzero(flips), key=lambda i: (-flips[i], -conf[i], i))
    wrong = sorted(np.flatnonzero(pred != labels), key=lambda i: (-conf[i], i))
    order = disagree + [i for i in wrong if flips[i] == 0]
    kinds = [", ".join(k for k, on in ((DISAGREES, flips[i] > 0), (ERROR, pred[i] != labels[i])) if on) for i in order]
    found = {DISAGREES: len(disagree), ERROR: len(wrong)}
    why = []
    if not int8:
        why.append("no int8 artifact ran, so only the float model's errors are candidates")
    if limit == 0:
        why.append("report.gallery is 0")
    elif not order:
        why.append("no test image where an int8 artifact disagrees with the float model, and none the float model "
                   "gets wrong")
    elif len(order) > limit:
        why.append(f"showing the first {limit} of {len(order)} (report.gallery)")
    return [(int(i), k) for i, k in zip(order, kinds)][:limit], found, "; ".join(why) or None


def _prediction(row: dict, i: int, classes: list[str]) -> dict:
    return {"name": row["name"], "precision": row["precision"], "class": classes[row["predictions"][i]],
            "confidence": row["confidence"][i]}


def _check_same_split(results: dict, data: PreparedData) -> None:
    """verify's test_set must be this dataset's test split, image for image, or the indices would
    point at other images (verify's key covers the dataset, so only a stale file gets here)."""
    now = [(t["id"], t["sha256"], t["label"]) for t in data.images_of("test")]
    recorded = [(t["id"], t["sha256"], t["label"]) for t in results["test_set"]]
    if now != recorded:
        raise MissingArtifactError("verify/results.json was measured on another test split than this dataset's", _FIX)


def run_explain(cfg: BuildConfig, data: PreparedData, manifest: Manifest) -> dict:
    """Write explain/gallery.json and explain/<k>.png; returns the gallery record."""
    t0 = time.perf_counter()
    checkpoint = float_checkpoint(manifest)
    results = read_results(manifest)
    chosen, found, reason = select(results, cfg.report.gallery)
    if chosen:
        _check_same_split(results, data)
    out = cfg.output_dir / "explain"
    classes, rows = results["classes"], results["rows"]
    ref = next((r for r in rows if r["name"] == results["reference"]), None)
    layer_name, pngs, entries = None, {}, []
    if chosen:
        from edgepipe.pipeline.gradcam import grad_cam, overlay_png, target_layer
        from edgepipe.pipeline.torch_model import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
        others = [r for r in rows if r is not ref and r["status"] == "ok" and r.get("predictions") is not None]
        for start in range(0, len(chosen), _CHUNK):
            part = chosen[start:start + _CHUNK]
            rgb8 = data.images[data.split.test[[i for i, _ in part]]]
            x = data.spec.normalize(rgb8)
            if layer_name is None:
                layer_name, layer = target_layer(model, x[:1])
            heat = grad_cam(model, x, [ref["predictions"][i] for i, _ in part], layer=layer)
            for k, (i, kind), image, h in zip(range(start, start + len(part)), part, rgb8, heat):
                pngs[f"png_{k}"] = _write_png(out / f"{k}.png", overlay_png(image, h))
                entries.append({"index": i, "id": results["test_set"][i]["id"],
                                "label": results["test_set"][i]["label"], "kind": kind,
                                "float": _prediction(ref, i, classes),
                                "artifacts": [_prediction(r, i, classes) for r in others], "png": f"explain/{k}.png"})
    for stale in out.glob("*.png") if out.is_dir() else []:  # a larger gallery's leftovers
        if stale.name not in {p.name for p in pngs.values()}:
            stale.unlink()
    shown = {kind: sum(kind in e["kind"] for e in entries) for kind in (DISAGREES, ERROR)}
    gallery = {"schema": EXPLAIN_SCHEMA, "method": METHOD if entries else None, "layer": layer_name,
               "reference": results["reference"], "limit": cfg.report.gallery, "found": found,
               "shown": shown if found else {}, "reason": reason, "entries": entries}
    path = write_json(out / "gallery.json", checked(Gallery, gallery, "explain/gallery.json"))
    wall = round(time.perf_counter() - t0, 1)
    manifest.record_stage("explain", {"gallery": path, **pngs}, {"found": found, "shown": len(entries)}, wall_s=wall)
    console.print(f"gallery: {len(entries)} image(s) with Grad-CAM on {layer_name or '-'}; found "
                  + (", ".join(f"{k} {v}" for k, v in found.items()) or "-") + (f" ({reason})" if reason else "")
                  + f", {wall:.1f} s")
    return gallery


def _write_png(path: Path, png: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(png)
    return path
