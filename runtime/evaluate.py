"""On-device measurements of a bundle: latency (`edgepipe bench`) and accuracy on labelled images
(`edgepipe check`), each done the way the build's verify stage did it so the numbers compare."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgepipe.core.errors import DataError, ImageError
from edgepipe.core.metrics import classification_metrics, machine_info, measure_latency
from edgepipe.core.preprocess import IMAGE_SUFFIXES
from edgepipe.runtime.predictor import Predictor


def bench(p: Predictor, runs: int | None = None, warmup: int | None = None, batch: int | None = None,
          image: str | Path | None = None) -> dict:
    """Batch-1 p50/p95/p99 and batch throughput with verify's method and, by default, its settings.

    Verify scores the whole test split before it times, so bench first runs the same number of
    batches: both then time a runner in the same warm state. Latency does not depend on pixel
    values for these networks, so without `image` a fixed random image stands in."""
    b = p.bundle
    runs = runs or b.method("runs", 100)
    warmup = b.method("warmup", 10) if warmup is None else warmup
    batch = min(batch or b.method("throughput_batch", 32), p.runner.max_batch or 1 << 30)
    size = p.spec.image_size
    rgb = p.load(image) if image is not None else np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)
    one, many = p.spec.normalize(rgb[None]), p.spec.normalize(np.repeat(rgb[None], batch, axis=0))
    primes = math.ceil(int(b.verified.get("test_images") or 0) / batch)
    for _ in range(primes):
        p.runner.infer(many)
    timing = measure_latency(p.runner, one, many, runs, warmup)
    return {"bundle": b.name, "machine": machine_info(p.threads), "runtime": p.runner.runtime_info(),
            "method": {"warmup": warmup, "runs": runs, "batch_latency": 1, "throughput_batch": batch,
                       "priming_batches": primes, "input": str(image) if image is not None else "random pixels",
                       "timing": "wall clock around runner.infer"},
            **timing, "build": {k: b.verified.get(k) for k in ("latency_ms", "throughput", "machine", "runtime")}}


def labelled_images(folder: str | Path, labels: list[str]) -> list[tuple[Path, int]]:
    """folder/<label>/**/*.png|jpg... -> (path, label index); every sub-folder must be a bundle label."""
    root = Path(folder)
    layout = f"arrange images as {root}/<label>/*.png, labels: {', '.join(labels)}"
    if not root.is_dir():
        raise DataError(f"{root} is not a folder", layout)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders", layout)
    unknown = [d.name for d in class_dirs if d.name not in labels]
    if unknown:
        raise DataError(f"sub-folder(s) {', '.join(unknown)} of {root} are not labels of this bundle", layout)
    items = [(f, labels.index(d.name)) for d in class_dirs for f in sorted(d.rglob("*"))
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DataError(f"no images under {root} ({', '.join(sorted(IMAGE_SUFFIXES))})", layout)
    return items


def check(p: Predictor, folder: str | Path, advance: Callable[[], None] = lambda: None) -> dict:
    """Accuracy on a labelled folder, next to what the build verified. Unreadable images are listed, not fatal."""
    items = labelled_images(folder, p.labels)
    preds, truth, unreadable, pending, pending_y = [], [], [], [], []

    def flush():
        if pending:
            preds.extend(p.logits(np.stack(pending)).argmax(1).tolist())
            truth.extend(pending_y)
            pending.clear()
            pending_y.clear()

    for path, y in items:
        try:
            pending.append(p.load(path))
            pending_y.append(y)
        except ImageError as e:
            unreadable.append({"path": str(path), "error": e.problem})
        if len(pending) == p.batch_size:
            flush()
        advance()
    flush()
    if not truth:
        raise DataError(f"none of the {len(items)} images under {folder} could be read", unreadable[0]["error"])
    metrics = classification_metrics(np.asarray(preds), np.asarray(truth), p.labels)
    v = p.bundle.verified
    return {"bundle": p.bundle.name, "images": len(truth), "unreadable": unreadable, **metrics,
            "build": {"how": v.get("how"), "accuracy": v.get("accuracy"), "test_images": v.get("test_images")}}
