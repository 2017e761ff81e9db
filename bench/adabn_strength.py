"""AdaBN strength on the field-loop scenario: release 1 (ELPV mono cells only, bench/configs/elpv_mono.yaml)
adapted to unlabelled poly cells at strengths 0-1 (adapt.strength), scored in float on its own mono
test split and on the 800 labelled poly cells (which no release here has seen: AdaBN reads the other
750, unlabelled). One set of batch-norm statistics serves every input, so the question is how much
poly accuracy each strength buys and how much mono accuracy it costs.

    .venv/bin/python bench/field_loop_update.py prepare    # the poly folders under build/bench-field
    .venv/bin/python bench/adabn_strength.py releases      # release 1's fine-tune for each seed (~7 min each)
    .venv/bin/python bench/adabn_strength.py measure       # bench/results/adabn_strength.{md,json}

Seed 0's release is the field bench's build/elpv-mono (made here when missing); seeds 1 and 2 are
the same config with another split seed, in build/elpv-mono-s<seed>. Only the fine-tune stage runs:
AdaBN works on the float checkpoint, and the field bench's int8 rows show the adapted model quantizes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bench" / "configs" / "elpv_mono.yaml"
FIELD = REPO / "build" / "bench-field"
LABELLED, UNLABELLED = FIELD / "poly-labelled", FIELD / "poly-unlabelled"
RESULTS = REPO / "bench" / "results" / "adabn_strength"
SEEDS = (0, 1, 2)
STRENGTHS = (0.25, 0.5, 0.75, 1.0)
NOTES = "<!-- notes: written by hand, kept when the table is rewritten -->"


def build_dir(seed: int) -> Path:
    return REPO / "build" / ("elpv-mono" if seed == 0 else f"elpv-mono-s{seed}")


def config_for(seed: int) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg.update(seed=seed, name=build_dir(seed).name, output_dir=str(build_dir(seed)))
    return cfg


def config_path(seed: int) -> Path:
    path = FIELD / f"{build_dir(seed).name}.yaml"
    path.write_text(yaml.safe_dump(config_for(seed)))
    return path


def releases(seeds) -> None:
    for seed in seeds:
        if (build_dir(seed) / "finetune" / "model.pt").exists():
            continue
        path = config_path(seed)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgepipe", "finetune", str(path)], check=True, cwd=REPO)
        print(f"seed {seed}: release 1 fine-tuned in {time.perf_counter() - start:.0f} s", flush=True)


def _folder_images(folder: Path, spec, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from edgepipe.core.preprocess import decode_image, read_image_bytes

    files = sorted((p, classes.index(p.parent.name)) for p in folder.glob("*/*") if p.is_file())
    return (np.stack([spec.to_rgb8(decode_image(read_image_bytes(p))) for p, _ in files]),
            np.array([label for _, label in files]))


def measure_seed(seed: int, strengths) -> list[dict]:
    from edgepipe.core.preprocess import PreprocessSpec
    from edgepipe.pipeline.adapt import adapt_batchnorm, reference_images
    from edgepipe.pipeline.config import AdaptConfig, load_config
    from edgepipe.pipeline.data import prepare
    from edgepipe.pipeline.field_images import load_field_images
    from edgepipe.pipeline.torch_model import load_checkpoint, torch_logits

    cfg = load_config(config_path(seed))
    checkpoint = build_dir(seed) / "finetune" / "model.pt"
    _, meta = load_checkpoint(checkpoint)
    spec, classes = PreprocessSpec.from_dict(meta["preprocess"]), list(meta["classes"])
    data = prepare(cfg.dataset, spec, seed)
    mono = data.subset("test")
    poly = _folder_images(LABELLED, spec, classes)
    target, _, _ = load_field_images(AdaptConfig(images=UNLABELLED, limit=1000), spec, seed, "skip")
    source = reference_images(data, len(target), seed)
    rows = []
    for strength in (0.0, *strengths):
        model, _ = load_checkpoint(checkpoint)  # each strength from release 1 itself
        start = time.perf_counter()
        if strength:
            adapt_batchnorm(model, source, target, spec, strength=strength)
        row = {"seed": seed, "strength": strength, "adapt_s": round(time.perf_counter() - start, 1)}
        for name, (x, y) in (("mono", mono), ("poly", poly)):
            row[name] = float((torch_logits(model, x, spec).argmax(1) == y).mean())
            row[f"{name}_images"] = int(len(y))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write_table(rows: list[dict], machine: str = "") -> None:
    RESULTS.with_suffix(".json").write_text(json.dumps({"date": dt.date.today().isoformat(), "machine": machine,
                                                        "rows": rows}, indent=2) + "\n")
    release = {r["seed"]: r for r in rows if r["strength"] == 0}
    lines = [f"# AdaBN strength: ELPV release 1 (mono only) adapted to unlabelled poly cells ({dt.date.today()})", "",
             "Float (torch) accuracy; strength 0 is release 1 itself. Mono: the seed's own test split; poly: the "
             "800 labelled poly cells (AdaBN read the 750 others, without labels)." + (f" Machine: {machine}." if machine
                                                                                         else ""), "",
             "| seed | strength | mono test | poly test | mono change | poly change | AdaBN wall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = release.get(r["seed"], r)
        lines.append(f"| {r['seed']} | {r['strength']:g} | {r['mono']:.2%} ({r['mono_images']}) | "
                     f"{r['poly']:.2%} ({r['poly_images']}) | {(r['mono'] - base['mono']) * 100:+.1f} pt | "
                     f"{(r['poly'] - base['poly']) * 100:+.1f} pt | {r['adapt_s']:.0f} s |")
    lines += ["", "| strength | seeds | mean mono change | mean poly change |", "|---|---|---|---|"]
    for strength in dict.fromkeys(r["strength"] for r in rows):
        mine = [r for r in rows if r["strength"] == strength and r["seed"] in release]
        if strength == 0 or not mine:
            continue
        d = lambda k: np.mean([(r[k] - release[r["seed"]][k]) * 100 for r in mine])  # noqa: E731
        lines.append(f"| {strength:g} | {' '.join(str(r['seed']) for r in mine)} | {d('mono'):+.1f} pt | "
                     f"{d('poly'):+.1f} pt |")
    write_keeping_notes(RESULTS.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines), flush=True)


def write_keeping_notes(md: Path, table: str) -> None:
    """md = table, then the marker and the reading written by hand below it in the file before."""
    notes = md.read_text().partition(NOTES)[2] if md.exists() and NOTES in md.read_text() else "\n"
    md.write_text(table + "\n\n" + NOTES + notes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["releases", "measure"])
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--strengths", nargs="+", type=float, default=list(STRENGTHS))
    args = ap.parse_args()
    if args.step == "releases":
        releases(args.seeds)
        return
    from edgepipe.core.metrics import machine_info

    rows = []
    for seed in args.seeds:  # the table after each seed: a stopped run keeps what it measured
        rows += measure_seed(seed, args.strengths)
        write_table(rows, machine_info(2)["cpu"])


if __name__ == "__main__":
    main()
