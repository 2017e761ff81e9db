"""The field-loop bench, monitoring part: release 1 trained on ELPV's monocrystalline cells only
(bench/configs/elpv_mono.yaml, built first with `edgepipe build`), deployed, then fed polycrystalline
cells (a real domain shift with real labels) or more mono cells it never saw.

Measures, for the release's bundle: accuracy on held-out mono and on poly cells; whether
`edgepipe monitor` flags poly windows (detection rate per window size); its false-alarm rate on
windows of held-out mono cells. Telemetry is written by the Predictor exactly as on a field unit.

    .venv/bin/edgepipe build bench/configs/elpv_mono.yaml
    .venv/bin/python bench/field_loop_mono_poly.py [--bundle dist/elpv-mono/onnxruntime-int8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

import numpy as np

from edgepipe.core.metrics import machine_info
from edgepipe.pipeline.config import load_config
from edgepipe.pipeline.data import catalog, select_files
from edgepipe.runtime import Predictor
from edgepipe.runtime.monitor import monitor
from edgepipe.runtime.telemetry import read_telemetry

REPO = Path(__file__).resolve().parents[1]


def streams(config: Path) -> dict[str, list]:
    """held-out mono cells (in no split of the build) and every poly cell, as (path, label)."""
    cfg = load_config(config)
    _, used = select_files(cfg.dataset, cfg.seed)
    used = {f.path for f in used}
    mono = [f for f in catalog(cfg.dataset).files if f.path not in used]
    poly = list(catalog(cfg.dataset.model_copy(update={"elpv_cells": "poly"})).files)
    classes = catalog(cfg.dataset).classes
    return {"mono held-out": [(f.path, classes[f.label]) for f in mono],
            "poly": [(f.path, classes[f.label]) for f in poly]}


def predict_with_telemetry(bundle: Path, items: list, log: Path) -> tuple[float, list[dict]]:
    with Predictor(bundle, telemetry=log) as p:
        preds = []
        for i in range(0, len(items), 32):
            preds += p.predict([path for path, _ in items[i:i + 32]])
    accuracy = float(np.mean([pr.label == label for pr, (_, label) in zip(preds, items)]))
    return accuracy, list(read_telemetry(log))


def windows(records: list[dict], size: int, count: int, rng) -> list[list[dict]]:
    """`count` windows of `size` records: consecutive runs of the stream when it holds enough of
    them, else random draws (without replacement inside a window) from it."""
    n = len(records)
    if n >= size * count:
        order = rng.permutation(n)  # the stream in a random order, cut into disjoint windows
        return [[records[j] for j in order[k * size:(k + 1) * size]] for k in range(count)]
    return [[records[j] for j in rng.choice(n, size, replace=False)] for _ in range(count)]


def rate(bundle: Path, records: list[dict], size: int, count: int, rng) -> tuple[float, dict]:
    flagged, signals = 0, {}
    for w in windows(records, size, count, rng):
        r = monitor(bundle, w, window=size)
        flagged += r.drift
        for s in r.drifted:
            signals[s] = signals.get(s, 0) + 1
    return flagged / count, signals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=REPO / "bench/configs/elpv_mono.yaml")
    ap.add_argument("--bundle", type=Path, default=REPO / "dist/elpv-mono/onnxruntime-int8")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/field_loop_monitor")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    data = streams(args.config)
    out = {"date": dt.date.today().isoformat(), "machine": machine_info(2), "bundle": str(args.bundle), "streams": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, items in data.items():
            acc, records = predict_with_telemetry(args.bundle, items, Path(tmp) / f"{name.split()[0]}.jsonl")
            entry = {"images": len(items), "accuracy": acc, "windows": {}}
            for size in (50, 100, 200):
                count = 40 if name == "poly" else 50
                r, signals = rate(args.bundle, records, size, count, rng)
                entry["windows"][size] = {"count": count, "flagged": r, "signals": signals}
            out["streams"][name] = entry
            print(name, json.dumps(entry))
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Field loop, monitoring: ELPV mono -> poly ({out['date']})", "",
             f"Release 1: `{args.config.relative_to(REPO)}` (mono cells only, 800 of 1,074), bundle "
             f"`{args.bundle.relative_to(REPO)}`; machine {out['machine']['cpu']}.", "",
             "| stream | images | accuracy | window | windows | flagged as drift | signals that moved (windows) |",
             "|---|---|---|---|---|---|---|"]
    for name, e in out["streams"].items():
        for size, w in e["windows"].items():
            sig = ", ".join(f"{k} ({v})" for k, v in sorted(w["signals"].items(), key=lambda kv: -kv[1])) or "-"
            lines.append(f"| {name} | {e['images']} | {e['accuracy']:.2%} | {size} | {w['count']} | {w['flagged']:.0%} | {sig} |")
    lines += ["", "Windows: poly, disjoint runs of the stream in a random order where it holds enough images "
              "(else random draws); held-out mono, 274 images, so windows of 200 are random draws from the same "
              "274 and overlap: their false-alarm rate is not from independent windows."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
