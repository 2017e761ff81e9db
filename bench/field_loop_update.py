"""The field-loop bench, update and adaptation part: release 1 (bench/configs/elpv_mono.yaml, ELPV's
monocrystalline cells only) meets polycrystalline cells. ELPV's 1,550 poly cells are cut, by a
seeded draw, into 800 labelled field images (`edgepipe update --data`; 200 of them become the
field test split, the poly test set of every row below) and 750 unlabelled ones (`--adapt`).

    .venv/bin/python bench/field_loop_update.py prepare     # the two folders under build/bench-field
    .venv/bin/python bench/field_loop_update.py builds [--seeds 0 1 2]   # the four builds below per seed
    .venv/bin/python bench/field_loop_update.py measure [--seeds 0 1 2]  # bench/results/field_loop_update.{md,json}

Seed 0 is bench/configs/*.yaml; seeds 1 and 2 the same configs with another split seed (release 1 as
bench/adabn_strength.py makes it, build/elpv-mono-s<seed>, and -adabn, -update, elpv-mono-poly-s<seed>).
A build folder that exists is built again (incrementally: up to date is a no-op), never copied over.

Rows: release 1; release 1 + AdaBN on the unlabelled poly cells; `edgepipe update` from release 1
with the labelled poly cells; a build trained on mono + the labelled poly cells from ImageNet
weights (dataset.field, no update). Each on release 1's mono test cells and the 200 poly test cells.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the sibling benches: seeds' configs, the notes-keeping writer
FIELD = REPO / "build" / "bench-field"
LABELLED, UNLABELLED = FIELD / "poly-labelled", FIELD / "poly-unlabelled"
TITLES = {"release": "release 1 (mono only)", "adabn": "release 1 + AdaBN (750 unlabelled poly)",
          "update": "update from release 1 (+800 labelled poly)", "both": "mono + poly from ImageNet (no update)"}


def folders(seed: int) -> dict[str, str]:
    """Build folder names (under build/, and dist/) of each row for a split seed."""
    base = "elpv-mono" if seed == 0 else f"elpv-mono-s{seed}"
    return {"release": base, "adabn": f"{base}-adabn", "update": f"{base}-update",
            "both": "elpv-mono-poly" if seed == 0 else f"elpv-mono-poly-s{seed}"}


def prepare() -> None:
    from edgepipe.pipeline.config import load_config
    from edgepipe.pipeline.data import catalog

    cfg = load_config(REPO / "bench/configs/elpv_mono.yaml")
    cat = catalog(cfg.dataset.model_copy(update={"elpv_cells": "poly"}))
    order = np.random.default_rng(16).permutation(len(cat.files))
    shutil.rmtree(FIELD, ignore_errors=True)
    for k, i in enumerate(order):
        f = cat.files[i]
        dest = LABELLED / cat.classes[f.label] / f.path.name if k < 800 else UNLABELLED / f.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.path, dest)
    print(f"{LABELLED}: 800 labelled poly cells; {UNLABELLED}: {len(order) - 800} unlabelled")


def _configs(seed: int) -> dict[str, Path]:
    """The configs of release 1, its AdaBN build and the mono + poly build for a seed."""
    if seed == 0:
        return {k: REPO / "bench/configs" / f for k, f in
                (("release", "elpv_mono.yaml"), ("adabn", "elpv_mono_adabn.yaml"), ("both", "elpv_mono_poly.yaml"))}
    import yaml
    from field_loop_select import configs as select_configs

    release, adabn = select_configs(seed)
    both = yaml.safe_load((REPO / "bench/configs/elpv_mono_poly.yaml").read_text())
    both.update(seed=seed, name=folders(seed)["both"], output_dir=str(REPO / "build" / folders(seed)["both"]),
                dataset={**both["dataset"], "field": {"root": str(LABELLED)}}, bundle={"dist_dir": str(REPO / "dist")})
    path = FIELD / f"{folders(seed)['both']}.yaml"
    path.write_text(yaml.safe_dump(both))
    return {"release": release, "adabn": adabn, "both": path}


def _commands(seed: int) -> list[tuple[str, list[str]]]:
    """(row, command) in the order they must run: AdaBN starts from a copy of release 1's build
    folder (only the stages from adapt on run); the update reads release 1."""
    ep, cfg, names = str(REPO / ".venv/bin/edgepipe"), _configs(seed), folders(seed)
    return [("release", [ep, "build", str(cfg["release"])]),
            ("adabn", [ep, "build", str(cfg["adabn"])]),
            ("update", [ep, "update", str(cfg["release"]), "--from", f"build/{names['release']}",
                        "--data", str(LABELLED)]),
            ("both", [ep, "build", str(cfg["both"])])]


def builds(seeds, rows) -> None:
    """Run the builds of `rows` per seed; exit 3 (an artifact failed a gate) is a result the table reports."""
    import subprocess
    import time

    walls_file = FIELD / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
    for seed in seeds:
        names = folders(seed)
        for row, cmd in _commands(seed):
            if row not in rows:
                continue
            if row == "adabn" and not (REPO / "build" / names[row]).exists():
                shutil.copytree(REPO / "build" / names["release"], REPO / "build" / names[row])
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=REPO).returncode
            wall = {"wall_s": round(time.perf_counter() - t0, 1), "exit_code": rc}
            manifest = REPO / "build" / names[row] / "manifest.json"
            ran = json.loads(manifest.read_text()).get("last_run", {}).get("ran") if manifest.is_file() else None
            if ran == [] and names[row] in walls:  # up to date: keep the wall of the run that built it
                wall = walls[names[row]]
            walls[names[row]] = wall
            print(names[row], wall, flush=True)
            if rc not in (0, 3):
                raise SystemExit(f"{' '.join(cmd)} exited {rc}")
            walls_file.write_text(json.dumps(walls, indent=2) + "\n")


def _stages(name: str) -> dict:
    return json.loads((REPO / "build" / name / "manifest.json").read_text()).get("stage_wall_s", {})


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} s"


def _accuracy(bundle: Path, items: list[tuple[Path, str]]) -> float:
    from edgepipe.runtime import Predictor

    with Predictor(bundle) as p:
        preds = []
        for i in range(0, len(items), 32):
            preds += p.predict([path for path, _ in items[i:i + 32]])
    return float(np.mean([pr.label == label for pr, (_, label) in zip(preds, items)]))


def _goal_rows(rows: list[dict], seeds) -> list[str]:
    """Per seed and artifact, the update against the mono + poly build (poly) and release 1 (mono),
    then the mean over the seeds."""
    get = {(r["seed"], r["row"], r["artifact"]): r for r in rows}
    lines, gaps = [], {}
    for a in ("onnxruntime-fp32", "onnxruntime-int8"):
        for seed in seeds:
            u = get[seed, "update", a]
            poly, mono = 100 * (u["poly"] - get[seed, "both", a]["poly"]), 100 * (u["mono"] - get[seed, "release", a]["mono"])
            gaps.setdefault(a, []).append((poly, mono))
            lines.append(f"| {seed} | {a} | {poly:+.1f} pt | {mono:+.1f} pt | {u['gates']} |")
        poly, mono = np.mean(gaps[a], axis=0)
        lines.append(f"| mean | {a} | {poly:+.1f} pt | {mono:+.1f} pt | |")
    return lines


def measure(seeds, rows) -> None:
    from edgepipe.core.metrics import machine_info
    from edgepipe.pipeline.config import load_config
    from edgepipe.pipeline.data import catalog

    root = catalog(load_config(REPO / "bench/configs/elpv_mono.yaml").dataset).root
    walls = json.loads((FIELD / "walls.json").read_text()) if (FIELD / "walls.json").exists() else {}
    out = {"date": dt.date.today().isoformat(), "machine": machine_info(2), "walls": walls, "rows": []}
    for seed in seeds:
        names = folders(seed)
        update = json.loads((REPO / "build" / names["update"] / "report.json").read_text())
        mono = [(root / t["id"], t["label"]) for t in update["test_set"] if t["domain"] == "dataset"]
        poly = [(LABELLED / t["id"].removeprefix("field/"), t["label"]) for t in update["test_set"]
                if t["domain"] == "field"]
        for row, name in names.items():
            if row not in rows:
                continue
            report = json.loads((REPO / "build" / name / "report.json").read_text())
            gates = {}
            for g in report["gates"]:
                gates.setdefault(g["artifact"], []).append(g)
            for precision in ("fp32", "int8"):
                artifact = f"onnxruntime-{precision}"
                failed = [f"{g['gate']}" for g in gates.get(artifact, []) if g["status"] == "failed"]
                r = {"seed": seed, "row": row, "build": TITLES[row], "folder": name, "artifact": artifact,
                     "mono": _accuracy(REPO / "dist" / name / artifact, mono),
                     "poly": _accuracy(REPO / "dist" / name / artifact, poly), "mono_test": len(mono),
                     "poly_test": len(poly), "gates": "pass" if not failed else "FAIL: " + ", ".join(failed),
                     "adapt": report.get("adapt"), "build_wall_s": walls.get(name, {}).get("wall_s"),
                     # an update's p50 latency against the previous release re-timed in the same run
                     "baseline_latency_increase": next((g["value"] for g in gates.get(artifact, [])
                                                        if g["gate"] == "baseline_latency_increase"), None),
                     "stage_wall_s": _stages(name)}
                out["rows"].append(r)
                print(json.dumps(r), flush=True)
    dest = REPO / "bench/results/field_loop_update"
    dest.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Field loop, update and AdaBN: ELPV mono -> poly ({out['date']})", "",
             "Bundles run by the Predictor on release 1's mono test cells and on the poly test cells of the "
             f"update's field split (200 each), split seeds {', '.join(map(str, seeds))}; machine "
             f"{out['machine']['cpu']}.", "",
             "| seed | build | artifact | mono test | poly test | its gates | build wall |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['build']} | {r['artifact']} | {r['mono']:.2%} | {r['poly']:.2%} | {r['gates']} | "
              f"{_seconds(r['build_wall_s'])} |" for r in out["rows"]]
    lines += ["", "The update's goals per seed and artifact: poly within 1 pt of mono + poly from ImageNet, mono "
              "at most 0.5 pt below release 1.", "",
              "| seed | artifact | update poly - both poly | update mono - release 1 mono | update's gates |",
              "|---|---|---|---|---|"]
    lines += _goal_rows(out["rows"], seeds)
    latency = [r["baseline_latency_increase"] for r in out["rows"] if r["baseline_latency_increase"] is not None]
    if latency:
        lines += ["", f"The updates' p50 latency against release 1 re-timed in the same run: {min(latency):+.1%} to "
                      f"{max(latency):+.1%} (gate limit +50 %)."]
    finetune = [r["stage_wall_s"].get("finetune") for r in out["rows"] if r["stage_wall_s"].get("finetune")]
    lines += [f"Fine-tune stage: {min(finetune):.0f}-{max(finetune):.0f} s a build."]
    from adabn_strength import write_keeping_notes

    write_keeping_notes(dest.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["prepare", "builds", "measure"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", choices=list(TITLES), default=list(TITLES),
                    help="which builds (the update's goals need release, update and both)")
    args = ap.parse_args()
    if args.step == "prepare":
        prepare()
    else:
        {"builds": builds, "measure": measure}[args.step](args.seeds, args.rows)
