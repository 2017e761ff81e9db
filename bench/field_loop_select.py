"""The field-loop bench, choosing batch-norm statistics at run time: release 1 (ELPV mono cells only)
and its AdaBN build for poly cells (bench/configs/elpv_mono_adabn.yaml) deployed side by side;
`edgepipe monitor RUNNING TELEMETRY --alternative OTHER` decides per window which one the unit runs.

Full AdaBN gains poly and loses mono (bench/results/adabn_strength.md: +36.0 / -3.3 pt over 3
seeds); one set of statistics cannot keep both. Two bundles and a choice per window can: a mono
window should keep release 1 (mono unchanged), a poly window should switch to the adapted bundle.

    .venv/bin/python bench/field_loop_update.py prepare       # the poly folders, if not there yet
    .venv/bin/python bench/field_loop_select.py builds [--seeds 0 1 2]   # release 1 + its AdaBN build per seed
    .venv/bin/python bench/field_loop_select.py measure [--seeds 0 1 2]  # bench/results/field_loop_select.{md,json}

Seed 0 is the field bench's (bench/configs/elpv_mono.yaml, elpv_mono_adabn.yaml); seeds 1 and 2 the
same configs with another split seed (build/elpv-mono-s<seed>, as bench/adabn_strength.py makes them),
and -adabn for the adapted one. An AdaBN build starts from a copy of its release's build folder, so
only the stages from adapt on run.

Streams: the 274 mono cells in no split of either build (held out), and the 800 labelled poly cells
(AdaBN read the 750 others, unlabelled). Each window is drawn from one stream; the running bundle
writes its telemetry (the Predictor, as on a unit); the monitor's verdict says keep or switch; the
window's images are then scored with the bundle the unit runs after the verdict.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import adabn_strength  # noqa: E402  (the seeds' release configs)

FIELD = REPO / "build/bench-field"
LABELLED, UNLABELLED = FIELD / "poly-labelled", FIELD / "poly-unlabelled"
WINDOWS = 50  # per stream, window size and starting bundle


def name(seed: int) -> str:
    return adabn_strength.build_dir(seed).name  # elpv-mono, elpv-mono-s1, ...


def configs(seed: int) -> tuple[Path, Path]:
    """(release 1's config, its AdaBN build's) for a split seed."""
    if seed == 0:
        return REPO / "bench/configs/elpv_mono.yaml", REPO / "bench/configs/elpv_mono_adabn.yaml"
    cfg = adabn_strength.config_for(seed)
    adapted = FIELD / f"{name(seed)}-adabn.yaml"
    adapted.write_text(yaml.safe_dump({**cfg, "name": f"{name(seed)}-adabn", "output_dir": str(REPO / "build" / f"{name(seed)}-adabn"),
                                       "adapt": {"images": str(UNLABELLED)}}))
    return adabn_strength.config_path(seed), adapted


def builds(seeds) -> None:
    """Release 1 and its AdaBN build per seed; exit 3 (a gate failed) is a result, not an error."""
    for seed in seeds:
        release, adapted = configs(seed)
        walls = {}
        for label, cfg in (("release", release), ("adabn", adapted)):
            if label == "adabn":
                dest = REPO / "build" / f"{name(seed)}-adabn"
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(REPO / "build" / name(seed), dest)
            start = time.perf_counter()
            rc = subprocess.run([str(REPO / ".venv/bin/edgepipe"), "build", str(cfg)], cwd=REPO).returncode
            walls[label] = round(time.perf_counter() - start, 1)
            if rc not in (0, 3):
                raise SystemExit(f"edgepipe build {cfg} exited {rc}")
        print(f"seed {seed}: build walls {walls}", flush=True)


def streams(seed: int) -> dict[str, list[tuple[Path, str]]]:
    from field_loop_mono_poly import streams as monitor_streams

    mono = monitor_streams(configs(seed)[0])["mono held-out"]
    poly = sorted((p, p.parent.name) for p in LABELLED.glob("*/*") if p.is_file())
    return {"mono": mono, "poly": poly}


def run_stream(bundle: Path, items: list[tuple[Path, str]], log: Path) -> tuple[np.ndarray, list[dict]]:
    """(correct per image, telemetry records) of `bundle` on the stream."""
    from edgepipe.runtime import Predictor
    from edgepipe.runtime.telemetry import read_telemetry

    with Predictor(bundle, telemetry=log) as p:
        preds = []
        for i in range(0, len(items), 32):
            preds += p.predict([path for path, _ in items[i:i + 32]])
    return np.array([pr.label == label for pr, (_, label) in zip(preds, items)]), list(read_telemetry(log))


def measure(seed: int, precision: str, data: dict, sizes: tuple[int, ...], rng, tmp: Path) -> dict:
    from edgepipe.runtime.bundle import load_bundle
    from edgepipe.runtime.monitor import monitor

    dist = REPO / "dist"
    folders = {"release 1": dist / name(seed) / f"onnxruntime-{precision}",
               "AdaBN": dist / f"{name(seed)}-adabn" / f"onnxruntime-{precision}"}
    bundles = {k: load_bundle(v) for k, v in folders.items()}
    runs = {(b, s): run_stream(folders[b], items, tmp / f"{seed}-{precision}-{b[:3]}-{s}.jsonl")
            for b in folders for s, items in data.items()}
    out = {"accuracy": {b: {s: float(runs[b, s][0].mean()) for s in data} for b in folders}, "runs": []}
    for running, other in (("release 1", "AdaBN"), ("AdaBN", "release 1")):
        for stream, items in data.items():
            for size in sizes:
                decisions, scored = {"keep": 0, "switch": 0, "drift, no switch": 0}, []
                for _ in range(WINDOWS):
                    pick = rng.choice(len(items), size, replace=False)
                    records = [runs[running, stream][1][j] for j in pick]
                    report = monitor(bundles[running], records, size, [bundles[other]])
                    chosen = other if report.switch_to else running
                    decisions["switch" if report.switch_to else "drift, no switch" if report.drift else "keep"] += 1
                    # the same window's images scored by each bundle, and by the one the unit runs next
                    scored.append([float(runs[b, stream][0][pick].mean()) for b in (*folders, chosen)])
                mean = np.mean(scored, axis=0)
                row = {"seed": seed, "running": running, "stream": stream, "window": size, "windows": WINDOWS, **decisions,
                       **{f"accuracy_{b}": float(m) for b, m in zip(folders, mean)}, "accuracy_after": float(mean[-1])}
                out["runs"].append(row)
                print(precision, json.dumps(row), flush=True)
    return out


def write(out: dict, dest: Path) -> None:
    dest.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    seeds = list(out["seeds"])
    images = ", ".join(f"seed {k}: {v['images']['mono']} mono" for k, v in out["seeds"].items())
    lines = [f"# Field loop, batch-norm statistics chosen per window: ELPV mono -> poly ({out['date']})", "",
             "Release 1 (mono cells only) and its AdaBN build on the 750 unlabelled poly cells, for split seeds "
             f"{', '.join(seeds)}; streams: the held-out mono cells in no split of the builds ({images}) and the 800 "
             "labelled poly cells (not those AdaBN read); machine " + out["machine"]["cpu"] + ". `edgepipe monitor "
             "RUNNING --alternative OTHER` on each window; the window is then scored with the bundle the unit runs "
             "after the verdict.", "",
             "| artifact | bundle | mono (" + " / ".join(f"s{k}" for k in seeds) + ") | mean | poly | mean |",
             "|---|---|---|---|---|---|"]
    first = out["seeds"][seeds[0]]["precisions"]
    for precision in first:
        for b in first[precision]["accuracy"]:
            acc = {st: [out["seeds"][k]["precisions"][precision]["accuracy"][b][st] for k in seeds] for st in ("mono", "poly")}
            lines.append(f"| {precision} | {b} | " + " | ".join(
                f"{' / '.join(f'{100 * a:.1f}' for a in acc[st])} % | {100 * np.mean(acc[st]):.1f} %" for st in acc) + " |")
    lines += ["", f"Per window ({WINDOWS} windows per seed and row): what the monitor said, summed over the seeds, and "
              "the window's accuracy with the bundle the unit runs after the verdict against release 1 on the same "
              "windows (per seed, and the mean).", "",
              "| artifact | running | stream | window | keep | switch | drift, no switch | after the verdict vs "
              "release 1 (" + " / ".join(f"s{k}" for k in seeds) + ") | mean |", "|---|---|---|---|---|---|---|---|---|"]
    for precision in first:
        for i, r in enumerate(first[precision]["runs"]):
            rows = [out["seeds"][k]["precisions"][precision]["runs"][i] for k in seeds]
            change = [100 * (x["accuracy_after"] - x["accuracy_release 1"]) for x in rows]
            counts = [sum(x[c] for x in rows) for c in ("keep", "switch", "drift, no switch")]
            lines.append(f"| {precision} | {r['running']} | {r['stream']} | {r['window']} | "
                         + " | ".join(map(str, counts)) + f" | {' / '.join(f'{c:+.2f}' for c in change)} pt | "
                         f"{np.mean(change):+.2f} pt |")
    lines += ["", "Windows: random draws without replacement inside a window; the held-out mono cells (about 274) "
              "make windows of 200 that overlap, so their rates are not from independent windows."]
    adabn_strength.write_keeping_notes(dest.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    from edgepipe.core.metrics import machine_info

    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["builds", "measure"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/field_loop_select")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    args = ap.parse_args()
    if args.step == "builds":
        return builds(args.seeds)
    out = {"date": dt.date.today().isoformat(), "machine": machine_info(2), "seeds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            data, rng = streams(seed), np.random.default_rng(seed)
            entry = out["seeds"][str(seed)] = {"images": {k: len(v) for k, v in data.items()}, "precisions": {}}
            for precision in args.precisions:
                entry["precisions"][precision] = measure(seed, precision, data, (50, 100, 200), rng, Path(tmp))
    write(out, args.out)


if __name__ == "__main__":
    main()
