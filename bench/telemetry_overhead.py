"""What telemetry costs per prediction: batch-1 Predictor latency with and without it, side by side.

Usage:  .venv/bin/python bench/telemetry_overhead.py dist/elpv-lite0/onnxruntime-int8 dist/elpv-lite0/openvino-int8
                [--images FOLDER] [--runs 300] [--threads N] [--out bench/results/telemetry_overhead]

For each bundle one Predictor (batch 1, the build's threads) predicts on RUNS images, each twice in a
row, once with the TelemetryLog attached and once without; the order alternates from image to image,
so drift in the machine's speed (other processes, clocks) falls on both sides alike. Images are
decoded and resized beforehand (Predictor.load): what is timed is predict_pixels, the inference
plus, with telemetry, image_stats, the record's JSON and its write. Reported: p50 of each side, the
median of the paired differences (the overhead per prediction), and that overhead as a share of
the p50 without telemetry and of the model's own inference p50 (the bundle's "int8 p50"); then
each part of the telemetry timed alone on the same images. Results: OUT.md and OUT.json.

--images: a folder of images (default: the ELPV cells of the elpv-dataset package, if installed).
Runtime-only: needs no torch; runs in a device venv too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgepipe.core.image_stats import confidence_and_margin, image_stats
from edgepipe.core.metrics import machine_info
from edgepipe.runtime.predictor import Predictor, softmax
from edgepipe.runtime.telemetry import LineEncoder, TelemetryLog, read_telemetry

TARGET = 0.05  # the budget: under 5 % of the int8 p50


def default_images() -> Path | None:
    try:
        import elpv_dataset
    except ImportError:
        return None
    return Path(elpv_dataset.__file__).parent / "data" / "images"


def _p50(xs) -> float:
    return float(np.median(xs))


def _time(fn, n: int) -> float:
    """Median seconds of fn() over n calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return _p50(out)


class Timed:
    """The TelemetryLog, with the time each log() call takes inside predict_pixels kept."""

    def __init__(self, log: TelemetryLog):
        self.inner, self.seconds, self.cpu_seconds = log, [], []

    def log(self, *args) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        self.inner.log(*args)
        self.cpu_seconds.append(time.thread_time() - c0)  # this thread's CPU time: other processes' load left out
        self.seconds.append(time.perf_counter() - t0)


def measure(bundle: Path, files: list[Path], runs: int, threads: int | None, workdir: Path) -> dict:
    log_path = workdir / f"{bundle.parent.name}-{bundle.name}.telemetry.jsonl"
    log = TelemetryLog(log_path)
    timed = Timed(log)
    with Predictor(bundle, threads=threads, batch_size=1) as p:
        rgb8 = np.stack([p.load(f) for f in files[:runs]])
        for i in range(min(20, runs)):  # warm-up, both ways
            p.telemetry = log if i % 2 else None
            p.predict_pixels(rgb8[i:i + 1])
        with_s, without_s, model_s, model_with_s = [], [], [], []
        timed.seconds.clear()
        timed.cpu_seconds.clear()
        for i in range(runs):
            one = rgb8[i:i + 1]
            for attached in ((True, False) if i % 2 == 0 else (False, True)):
                p.telemetry = timed if attached else None
                t0 = time.perf_counter()
                p.predict_pixels(one)
                dt = time.perf_counter() - t0
                (with_s if attached else without_s).append(dt)
                (model_with_s if attached else model_s).append(p.runner.inference_time)
        p.telemetry = None
        # each part alone, on the same images (median per call, batch 1): hot caches, unlike in the call
        probs = softmax(p.runner.infer(p.spec.normalize(rgb8[:1])))
        k = min(runs, 200)
        it = iter(range(10**9))
        encoder = LineEncoder(p.bundle.meta, p.labels)

        def nxt() -> np.ndarray:
            return rgb8[next(it) % k][None]

        parts = {"image_stats": _time(lambda: image_stats(nxt()), k),
                 "confidence_and_margin": _time(lambda: confidence_and_margin(probs), k),
                 "lines (stats + encoding)": _time(lambda: encoder.lines(probs, nxt()), k),
                 "log (stats + encoding + write)": _time(lambda: log.log(p.bundle.meta, p.labels, probs, nxt()), k)}
        line = encoder.lines(probs, rgb8[:1])[0]
        parts["write"] = _time(lambda: log._write([line]), k)
    log.close()
    written = read_telemetry(log_path)
    without_p50, with_p50, model_p50 = _p50(without_s), _p50(with_s), _p50(model_s)
    overhead = _p50(np.array(with_s) - np.array(without_s))
    in_call, in_call_cpu = _p50(timed.seconds), _p50(timed.cpu_seconds)
    build_p50 = (p.bundle.verified.get("latency_ms") or {}).get("p50")
    meta = p.bundle.meta
    return {"bundle": str(bundle), "name": f"{meta['name']}/{meta['target']}-{meta['precision']}",
            "runtime": (meta.get("runtime") or {}).get("version"), "threads": p.threads, "runs": runs,
            "p50_ms_without": without_p50 * 1e3, "p50_ms_with": with_p50 * 1e3,
            "model_p50_ms": model_p50 * 1e3, "model_p50_ms_with": _p50(model_with_s) * 1e3,
            "overhead_ms": overhead * 1e3, "telemetry_in_call_ms": in_call * 1e3,
            "overhead_vs_without": overhead / without_p50, "overhead_vs_model_p50": overhead / model_p50,
            "in_call_vs_model_p50": in_call / model_p50, "telemetry_cpu_ms": in_call_cpu * 1e3,
            "cpu_vs_build_p50": in_call_cpu * 1e3 / build_p50 if build_p50 else None,
            "p50_ratio": with_p50 / without_p50, "build_p50_ms": build_p50,
            "parts_us": {name: s * 1e6 for name, s in parts.items()},
            "records_written": len(written), "record_bytes": len(line)}


def write_results(rows: list[dict], images: Path, out: Path, machine: dict, date: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    images = Path(os.path.relpath(images)) if images.is_relative_to(Path.cwd()) else images
    out.with_suffix(".json").write_text(json.dumps({"date": date, "machine": machine, "images": str(images),
                                                    "target": TARGET, "rows": rows}, indent=2) + "\n")
    lines = [f"# Telemetry overhead ({date})", "",
             f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['platform']}; load "
             f"average {machine['load_average_1_5_15min']['start'][0]:.1f} at the start, "
             f"{machine['load_average_1_5_15min']['end'][0]:.1f} at the end (other jobs shared the CPUs). "
             f"`bench/telemetry_overhead.py`, batch 1, images from `{images}` decoded beforehand; each image "
             "predicted with and without telemetry, back to back, the order alternating. Overhead: the median "
             "of the paired differences. Target: under 5 % of the int8 p50 (the model's inference).", "",
             "| bundle | threads | runs | p50 without ms | p50 with ms | model p50 ms | overhead ms | "
             "vs p50 without | vs model p50 | telemetry in the call ms | vs model p50 | telemetry CPU ms | "
             "build's int8 p50 ms | CPU vs build p50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs_build = f"{r['cpu_vs_build_p50']:.1%}" if r["cpu_vs_build_p50"] is not None else "-"
        lines.append(f"| {r['name']} | {r['threads']} | {r['runs']} | {r['p50_ms_without']:.3f} | "
                     f"{r['p50_ms_with']:.3f} | {r['model_p50_ms']:.3f} | {r['overhead_ms']:.3f} | "
                     f"{r['overhead_vs_without']:.1%} | {r['overhead_vs_model_p50']:.1%} | "
                     f"{r['telemetry_in_call_ms']:.3f} | {r['in_call_vs_model_p50']:.1%} | "
                     f"{r['telemetry_cpu_ms']:.3f} | {r['build_p50_ms'] or float('nan'):.2f} | {vs_build} |")
    lines += ["", "All p50. Overhead: the paired difference, what a caller waits longer. Telemetry in the call: "
              "the wall time TelemetryLog.log takes inside predict_pixels, right after the inference (cold "
              "caches). Telemetry CPU: the calling thread's CPU time in it, which other processes' load does "
              "not inflate; the build's int8 p50 is the bundle's verified latency (bundle.json), measured by "
              "the build on this machine."]
    lines += ["", "Each part alone (median µs per call, batch 1):", "",
              "| bundle | " + " | ".join(rows[0]["parts_us"]) + " |", "|---|" + "---|" * len(rows[0]["parts_us"])]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(f"{v:.1f}" for v in r["parts_us"].values()) + " |")
    lines += ["", f"A record is {rows[0]['record_bytes']} bytes: the default 16 MiB file holds about "
              f"{16 * 2**20 // rows[0]['record_bytes']:,} predictions, and with 3 rotated files kept the log "
              "stays under 64 MiB.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", type=Path, nargs="+")
    ap.add_argument("--images", type=Path, default=default_images())
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, default=Path("bench/results/telemetry_overhead"))
    args = ap.parse_args(argv)
    if args.images is None or not args.images.is_dir():
        print("error: pass --images FOLDER (the elpv-dataset package is not installed)", file=sys.stderr)
        return 2
    files = sorted(f for f in args.images.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(files) < args.runs:
        files = (files * (args.runs // max(1, len(files)) + 1))[:args.runs]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in args.bundles:
            rows.append(measure(bundle, files, args.runs, args.threads, Path(tmp)))
            r = rows[-1]
            print(f"{r['name']}: p50 {r['p50_ms_without']:.3f} ms without, {r['p50_ms_with']:.3f} ms with telemetry; "
                  f"overhead {r['overhead_ms'] * 1e3:.0f} us = {r['overhead_vs_without']:.1%} of the p50, "
                  f"{r['overhead_vs_model_p50']:.1%} of the model's {r['model_p50_ms']:.3f} ms "
                  f"({r['model_p50_ms_with']:.3f} ms in the calls with telemetry); telemetry.log in the call "
                  f"{r['telemetry_in_call_ms'] * 1e3:.0f} us = {r['in_call_vs_model_p50']:.1%}, CPU "
                  f"{r['telemetry_cpu_ms'] * 1e3:.0f} us = {r['cpu_vs_build_p50'] or 0:.1%} of the build's p50; "
                  "parts (us): " + ", ".join(f"{k} {v:.0f}" for k, v in r["parts_us"].items()), flush=True)
    load = {"start": load_start, "end": os.getloadavg()}
    machine = machine_info(rows[0]["threads"]) | {"load_average_1_5_15min": load}
    write_results(rows, args.images, args.out, machine, date)
    print(f"wrote {args.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
