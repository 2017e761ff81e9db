"""Hand-made report.json records with per-image predictions, for the diff and baseline tests: every
figure (accuracy, agreement, recall, confusion) is computed from the predictions, as verify does,
so a test that changes predictions gets a consistent report."""

from __future__ import annotations

import copy

import numpy as np

from edgepipe.core.metrics import classification_metrics
from edgepipe.pipeline.records import Report, checked

CLASSES = ["ok", "crack", "finger"]
MACHINE = {"cpu": "Test CPU", "logical_cpus": 2, "threads": 2, "platform": "linux"}


def _row(name: str, target: str, precision: str, pred: np.ndarray, labels: np.ndarray, ref: np.ndarray,
         p50: float) -> dict:
    m = classification_metrics(pred, labels, CLASSES)
    return {"name": name, "target": target, "precision": precision, "status": "ok", "reason": None, "proxy": None,
            "details": {}, "size_bytes": 4_000_000 if precision != "int8" else 1_000_000, **m,
            "accuracy_delta": m["accuracy"] - float((ref == labels).mean()), "agreement": float((pred == ref).mean()),
            "vs_parent": {"parent": "torch-fp32", "accuracy_delta": 0.0, "agreement": float((pred == ref).mean()),
                          "max_abs_logit_diff": 0.1},
            "latency_ms": {"p50": p50, "p95": p50 * 1.2, "p99": p50 * 1.5, "mean": p50, "runs": 20},
            "throughput": {"batch": 8, "images_per_s": 1000 / p50}, "runtime": None,
            "predictions": pred.tolist(), "confidence": [0.9] * len(pred)}


def synthetic_report(n: int = 100, seed: int = 0, name: str = "release") -> dict:
    """n test images; the float model is right on 90 %, the int8 artifact agrees with it on 97 %."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    ref = labels.copy()
    wrong = rng.choice(n, n // 10, replace=False)
    ref[wrong] = (labels[wrong] + 1) % len(CLASSES)
    int8 = ref.copy()
    flip = rng.choice(np.setdiff1d(np.arange(n), wrong), 3, replace=False)
    int8[flip] = (ref[flip] + 1) % len(CLASSES)
    rows = [_row("torch-fp32", "torch", "fp32", ref, labels, ref, 10.0),
            _row("onnxruntime-fp32", "onnxruntime", "fp32", ref, labels, ref, 8.0),
            _row("onnxruntime-int8", "onnxruntime", "int8", int8, labels, ref, 4.0)]
    report = {"schema": "edgepipe-report/1", "name": name, "created": "2026-12-01T00:00:00+00:00",
              "config_sha256": "0" * 64, "machine": MACHINE, "test_images": n, "reference": "torch-fp32",
              "passed": True, "exit_code": 0, "rows": rows, "gates": [],
              "test_set": [{"id": f"cells/{i:04d}.png", "sha256": f"{i:064x}", "label": CLASSES[y]}
                           for i, y in enumerate(labels)]}
    return checked(Report, report, "synthetic")


def with_predictions(report: dict, artifact: str, pred) -> dict:
    """A copy of report whose `artifact` row predicts `pred`, its figures recomputed."""
    out = copy.deepcopy(report)
    labels = np.array([CLASSES.index(t["label"]) for t in out["test_set"]])
    rows = {r["name"]: r for r in out["rows"]}
    ref = np.array(rows["torch-fp32"]["predictions"])
    old = rows[artifact]
    new = _row(artifact, old["target"], old["precision"], np.asarray(pred), labels, ref, old["latency_ms"]["p50"])
    out["rows"] = [new if r["name"] == artifact else r for r in out["rows"]]
    return checked(Report, out, "synthetic")


def dropped(report: dict, artifact: str, images: int) -> dict:
    """A copy where `artifact` gets `images` more test images wrong (each was right before)."""
    labels = np.array([CLASSES.index(t["label"]) for t in report["test_set"]])
    pred = np.array(next(r for r in report["rows"] if r["name"] == artifact)["predictions"])
    right = np.flatnonzero(pred == labels)[:images]
    pred[right] = (labels[right] + 1) % len(CLASSES)
    return with_predictions(report, artifact, pred)
