"""What report.html shows beyond report.json, gathered from the records earlier stages wrote (each
read through the manifest, so a changed or missing file is refused, not shown)."""

from __future__ import annotations

import json

from edgepipe.pipeline.html_report import ReportContext
from edgepipe.pipeline.manifest import Manifest


def _outputs(manifest: Manifest, stage: str) -> dict:
    return manifest.data["stages"].get(stage, {}).get("outputs", {})


def _json(manifest: Manifest, stage: str, name: str):
    return json.loads(manifest.output(stage, name).read_text()) if name in _outputs(manifest, stage) else None


def report_context(report: dict, manifest: Manifest) -> ReportContext:
    config = manifest.data["config"]
    quantize = manifest.data["stages"].get("quantize", {}).get("metrics", {})
    calibration = None
    if "calibration_images" in quantize:
        rounding = config["calibration"]["weight_rounding"]
        calibration = {"images": quantize["calibration_images"], "sha256": quantize.get("calibration_sha256"),
                       "method": f"{quantize['calibration_images']} class-balanced images from the train split; "
                                 f"int8 weights rounded {'data-aware' if rounding == 'data_aware' else 'to nearest'}; "
                                 "activation ranges per target (see each target's section)"}
    gallery = _json(manifest, "explain", "gallery")
    pngs = {}
    for entry in (gallery or {}).get("entries", []):
        path = manifest.out_dir / entry["png"]
        name = next((n for n, o in _outputs(manifest, "explain").items() if o["path"] == entry["png"]), None)
        if name is not None:  # checked against its recorded hash
            pngs[entry["png"]] = manifest.output("explain", name).read_bytes()
        elif path.is_file():
            pngs[entry["png"]] = path.read_bytes()
    dataset = manifest.data.get("dataset") or {}
    provenance = {"config": config, "config_sha256": report["config_sha256"],
                  "dataset": {k: dataset.get(k) for k in ("sha256", "split_sha256", "sizes", "per_class", "classes")},
                  "weights": report.get("weights"), "tool_versions": manifest.data.get("tool_versions", {}),
                  "machine": report["machine"]}
    return ReportContext(report=report, curve=_json(manifest, "finetune", "curve") or [],
                         finetune=_json(manifest, "finetune", "metrics"), calibration=calibration, gallery=gallery,
                         gallery_png=pngs, provenance=provenance)
