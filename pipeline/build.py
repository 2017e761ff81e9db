"""Runs stages in order: data -> finetune -> export -> quantize -> verify -> report -> bundle.

Each stage reads what earlier stages recorded in the manifest (checked by hash) and records its
own outputs, so any stage can also run alone once its inputs exist.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.config import BuildConfig
from pipeline.console import console
from pipeline.manifest import Manifest

STAGES = ("finetune", "export", "quantize", "verify", "report", "bundle")


def run_stages(cfg: BuildConfig, stages: tuple[str, ...], junit: Path | None = None) -> int:
    """Run `stages` (a subsequence of STAGES); returns the exit code (0, or 3 when a gate fails)."""
    from pipeline.backbones import preprocess_spec
    from pipeline.data import prepare
    from pipeline.export import run_export
    from pipeline.finetune import run_finetune
    from pipeline.quantize import recorded_artifacts, run_quantize
    from pipeline.report import run_report
    from pipeline.verify import run_verify

    t0 = time.perf_counter()
    manifest = Manifest.open(cfg)
    data = None
    if set(stages) - {"report", "bundle"}:
        data = prepare(cfg.dataset, preprocess_spec(cfg.model.backbone, cfg.model.image_size), cfg.seed)
        manifest.record_dataset(data.summary())
        console.print(f"dataset {cfg.dataset.source}: {len(data.labels)} images, classes {', '.join(data.classes)}, "
                      f"split {data.split.sizes()}")
    artifacts = results = None
    code = 0
    for stage in stages:
        started = time.perf_counter()
        console.rule(f"[bold]{stage}")
        if stage == "finetune":
            run_finetune(cfg, data, manifest)
        elif stage == "export":
            run_export(cfg, data, manifest)
        elif stage == "quantize":
            artifacts = run_quantize(cfg, data, manifest)
        elif stage == "verify":
            results = run_verify(cfg, data, manifest, artifacts if artifacts is not None else recorded_artifacts(manifest))
        elif stage == "report":
            if results is None:
                results = json.loads(manifest.output("verify", "results").read_text())
            code = run_report(cfg, results, manifest, junit)
        elif stage == "bundle":
            from pipeline.bundle import run_bundle

            run_bundle(cfg, manifest)
        manifest.data.setdefault("stage_wall_s", {})[stage] = round(time.perf_counter() - started, 1)
    manifest.data["wall_s"] = round(time.perf_counter() - t0, 1)
    manifest.save()
    console.print(f"done in {time.perf_counter() - t0:.0f} s; manifest: {manifest.path}")
    return code
