"""`edgepipe cv`: k-fold cross-validation of the fine-tune, the way the stages already run it.

Fold k is the build config with `dataset.split.fold = {index: k, of: K}` (validate on fold k of
train + val; pipeline/data.py) and its own output dir, OUTPUT_DIR/cv/fold-<k>/. Each fold runs the
ordinary fine-tune stage through the ordinary orchestrator, so a fold already trained is up to
date and skipped, a killed run resumes at the fold it was in, and a fold's manifest and
checkpoint are those of any build. The folds' metrics are summarised in cv/cv.json (an
edgepipe-cv/1 record), cv/report.md and a table.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
from rich.table import Table

from edgepipe.core.console import console
from edgepipe.core.files import atomic_output, write_json
from edgepipe.pipeline.config import BuildConfig, FoldConfig
from edgepipe.pipeline.records import CV_SCHEMA, CvReport, checked


def fold_config(cfg: BuildConfig, index: int, folds: int) -> BuildConfig:
    """The build config of one fold: its validation split and its own output dir, no bundles."""
    split = cfg.dataset.split.model_copy(update={"fold": FoldConfig(index=index, of=folds)})
    return cfg.model_copy(update={
        "dataset": cfg.dataset.model_copy(update={"split": split}),
        "output_dir": cfg.output_dir / "cv" / f"fold-{index}",
        "bundle": cfg.bundle.model_copy(update={"enabled": False}),
    })


def _spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


def run_cv(cfg: BuildConfig, folds: int) -> dict:
    from edgepipe.pipeline.build import run_stages
    from edgepipe.pipeline.manifest import Manifest
    from edgepipe.pipeline.ownership import build_lock

    t0 = time.perf_counter()
    root = cfg.output_dir / "cv"
    per_fold = []
    with build_lock(root):  # one cv at a time writes cv.json
        for k in range(1, folds + 1):
            fcfg = fold_config(cfg, k, folds)
            console.rule(f"[bold]cv fold {k} of {folds}")
            run_stages(fcfg, ("finetune",), incremental=True)
            manifest = Manifest.open(fcfg)
            metrics = manifest.data["stages"]["finetune"]["metrics"]
            sizes = manifest.data["dataset"]["sizes"]
            per_fold.append({"fold": k, "train_images": sizes["train"], "val_images": sizes["val"],
                             "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
                             "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                             "wall_s": metrics["wall_s"], "output_dir": str(fcfg.output_dir)})
        report = {"schema": CV_SCHEMA, "name": cfg.name,
                  "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "config_sha256": cfg.sha256(), "backbone": cfg.model.backbone, "image_size": cfg.model.image_size,
                  "seed": cfg.seed, "folds": folds, "test_images": sizes["test"], "per_fold": per_fold,
                  "val_accuracy": _spread([f["val_accuracy"] for f in per_fold]),
                  "test_accuracy": _spread([f["test_accuracy"] for f in per_fold]),
                  "wall_s": round(time.perf_counter() - t0, 1)}
        write_json(root / "cv.json", checked(CvReport, report, "cv/cv.json"))
        with atomic_output(root / "report.md") as tmp:
            tmp.write_text(render_markdown(report))
    _print_table(report)
    console.print(f"cv: {root / 'cv.json'}, {root / 'report.md'}")
    return report


def _rows(report: dict) -> list[list[str]]:
    rows = [[str(f["fold"]), str(f["train_images"]), str(f["val_images"]), f"{f['val_accuracy']:.2%}",
             f"{f['test_accuracy']:.2%}", str(f["best_epoch"]), str(f["epochs_run"]), f"{f['wall_s']:.0f}"]
            for f in report["per_fold"]]
    v, t = report["val_accuracy"], report["test_accuracy"]
    rows.append(["mean ± std", "", "", f"{v['mean']:.2%} ± {v['std']:.2%}", f"{t['mean']:.2%} ± {t['std']:.2%}",
                 "", "", f"{sum(f['wall_s'] for f in report['per_fold']):.0f}"])
    return rows


HEADERS = ["fold", "train", "val", "val accuracy", "test accuracy", "best epoch", "epochs", "wall s"]


def render_markdown(report: dict) -> str:
    v = report["val_accuracy"]
    lines = [f"# edgepipe cross-validation: {report['name']}", "",
             f"{report['folds']} stratified folds over train + val; {report['backbone']} at {report['image_size']} px, "
             f"seed {report['seed']}. The {report['test_images']} test images are the same for every fold and "
             "never trained or selected on.", "",
             f"**Val accuracy {v['mean']:.2%} ± {v['std']:.2%}** (min {v['min']:.2%}, max {v['max']:.2%}).", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    return "\n".join(lines) + "\n"


def _print_table(report: dict) -> None:
    table = Table(title=f"edgepipe cv {report['name']}: {report['folds']} folds, "
                        f"{report['test_images']} test images shared")
    for h in HEADERS:
        table.add_column(h)
    for row in _rows(report):
        table.add_row(*row, style="bold" if row[0] == "mean ± std" else None)
    console.print(table)
