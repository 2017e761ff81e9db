"""Classification and latency metrics shared by verify, bench and the runtime (numpy only)."""

from __future__ import annotations

import numpy as np


def classification_metrics(pred: np.ndarray, labels: np.ndarray, classes) -> dict:
    """Top-1 accuracy, macro F1, per-class precision / recall / F1 and the confusion matrix (rows:
    true, columns: predicted).

    per_class_recall[c] is None (JSON null) for a class with no true samples: its recall is
    undefined, not 0 (a labelled folder that lacks a class says nothing about that class); the same
    for per_class_precision[c] of a class never predicted, and per_class_f1[c] of a class neither
    present nor predicted.
    macro_f1 is the mean F1 over the classes that have true samples or predictions (the classes
    "present", as scikit-learn's default): a class absent from both counts for nothing, a class
    only predicted (all false positives) counts with F1 0. None when no class is present (no samples).
    """
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)
    recall = tp / np.maximum(support, 1)
    precision = tp / np.maximum(predicted, 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = (support > 0) | (predicted > 0)
    return {"accuracy": float((pred == labels).mean()),
            "macro_f1": float(f1[present].mean()) if present.any() else None,
            "per_class_recall": {c: float(r) if s else None for c, r, s in zip(classes, recall, support)},
            "per_class_precision": {c: float(p) if n else None for c, p, n in zip(classes, precision, predicted)},
            "per_class_f1": {c: float(f) if on else None for c, f, on in zip(classes, f1, present)},
            "confusion": confusion.tolist()}


def agreement(pred: np.ndarray, reference_pred: np.ndarray) -> float:
    return float((pred == reference_pred).mean())


def latency_stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "runs": int(len(ms))}


def measure_latency(runner, one: np.ndarray, batch: np.ndarray, runs: int, warmup: int) -> dict:
    """Batch-1 latency (`runs` timed after `warmup` untimed) and throughput at len(batch), through
    Runner.time on an active runner: the build's verify stage and `edgepipe bench` both call this,
    so their numbers are comparable."""
    times = runner.time(one, runs, warmup)
    batch_times = runner.time(batch, 3)
    return {"latency_ms": latency_stats(times),
            "throughput": {"batch": len(batch), "images_per_s": float(len(batch) / np.median(batch_times))}}


def machine_info(threads: int) -> dict:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads, "platform": platform.platform()}
