"""Fine-tune recipes for the CPU profile on ELPV, side by side over split seeds.

Each (variant, seed) runs `edgepipe finetune` on examples/elpv.yaml with the variant's overrides and
that seed (the seed picks the split and the training order), one after another on this machine, so
every variant gets the same CPU and the same 7-minute budget unless it changes it. Rows are
appended to bench/results/elpv_recipe_probe.json as they finish (a long run can be stopped and
resumed: finished rows are kept), and the table of per-variant means is rewritten after each.

    python bench/elpv_recipe_probe.py --variants "backbone_lr 1e-3" --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "elpv_recipe_probe"
# name -> overrides of the example config, as {section: {key: value}}. Two probes measured here ran
# on code that was not kept (batch norm re-estimated on the train images before the warm-up, and an
# exponential moving average of the weights): their rows stay in the results, they cannot be rerun.
VARIANTS = {
    "defaults": {},
    "defaults (re-plan every epoch)": {},  # the same settings after the budget change: a label for the code
    "backbone_lr 1e-3": {"finetune": {"backbone_lr": 1e-3}},
    "image_size 192": {"model": {"image_size": 192}},
    "image_size 160": {"model": {"image_size": 160}},
    "budget 14 min": {"finetune": {"budget_minutes": 14}},
}


def config_for(overrides: dict, seed: int) -> dict:
    cfg = yaml.safe_load((REPO / "examples" / "elpv.yaml").read_text())
    cfg.update(seed=seed, output_dir="out")
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def run(name: str, seed: int, work: Path) -> dict:
    folder = work / f"{re.sub('[^a-z0-9]+', '-', name.lower())}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh fine-tune, never a resumed or cached one
    folder.mkdir(parents=True)
    (folder / "build.yaml").write_text(yaml.safe_dump(config_for(VARIANTS[name], seed)))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgepipe", "finetune", str(folder / "build.yaml")], check=True,
                   stdout=subprocess.DEVNULL, cwd=REPO)
    metrics = json.loads((folder / "out" / "finetune" / "metrics.json").read_text())
    curve = json.loads((folder / "out" / "finetune" / "curve.json").read_text())
    return {"variant": name, "seed": seed, "wall_s": round(time.perf_counter() - start, 1),
            "val_curve": [round(c["val_accuracy"], 4) for c in curve if c["phase"] == "finetune"], **metrics}


def write_table(rows: list[dict]) -> None:
    RESULTS.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# ELPV fine-tune recipes on the CPU profile (tf_efficientnet_lite0, split seeds side by side)", "",
             "| variant | seed | epochs run / planned | best epoch | val | float test | fine-tune wall |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['seed']} | {r['epochs_run']} / {r.get('planned_epochs')} | {r['best_epoch']} | "
              f"{r['val_accuracy']:.2%} | {r['test_accuracy']:.2%} | {r['wall_s']:.0f} s |" for r in rows]
    lines += ["", "| variant | seeds | mean val | mean float test |", "|---|---|---|---|"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        lines.append(f"| {name} | {' '.join(str(r['seed']) for r in mine)} | "
                     f"{sum(r['val_accuracy'] for r in mine) / len(mine):.2%} | "
                     f"{sum(r['test_accuracy'] for r in mine) / len(mine):.2%} |")
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgepipe-elpv-probe"))
    args = ap.parse_args()
    rows = json.loads(RESULTS.with_suffix(".json").read_text()) if RESULTS.with_suffix(".json").exists() else []
    for name in args.variants:
        for seed in args.seeds:
            if any(r["variant"] == name and r["seed"] == seed for r in rows):
                continue  # measured before: kept
            rows.append(run(name, seed, args.work))
            write_table(rows)


if __name__ == "__main__":
    main()
