"""The field-loop bench, update and adaptation part: release 1 (bench/configs/elpv_mono.yaml, ELPV's
monocrystalline cells only) meets polycrystalline cells. ELPV's 1,550 poly cells are cut, by a
seeded draw, into 800 labelled field images (`edgepipe update --data`; 200 of them become the
field test split, the poly test set of every row below) and 750 unlabelled ones (`--adapt`).

    .venv/bin/python bench/field_loop_update.py prepare     # the two folders under build/bench-field
    .venv/bin/python bench/field_loop_update.py builds      # the four builds below, their wall times
    .venv/bin/python bench/field_loop_update.py measure     # bench/results/field_loop_update.{md,json}

Rows: release 1; release 1 + AdaBN on the unlabelled poly cells; `edgepipe update` from release 1
with the labelled poly cells; a build trained on mono + the labelled poly cells from ImageNet
weights (dataset.field, no update). Each on release 1's mono test cells and the 200 poly test cells.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIELD = REPO / "build" / "bench-field"
LABELLED, UNLABELLED = FIELD / "poly-labelled", FIELD / "poly-unlabelled"
BUILDS = {"release 1 (mono only)": "elpv-mono", "release 1 + AdaBN (750 unlabelled poly)": "elpv-mono-adabn",
          "update from release 1 (+800 labelled poly)": "elpv-mono-update",
          "mono + poly from ImageNet (no update)": "elpv-mono-poly"}


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


def _commands() -> list[tuple[str, list[str]]]:
    """(build folder, command) in the order they must run: AdaBN starts from a copy of release 1's
    build folder (only the stages from adapt on run); the update reads release 1."""
    ep = str(REPO / ".venv/bin/edgepipe")
    return [("elpv-mono", [ep, "build", "bench/configs/elpv_mono.yaml"]),
            ("elpv-mono-adabn", [ep, "build", "bench/configs/elpv_mono_adabn.yaml"]),
            ("elpv-mono-update", [ep, "update", "bench/configs/elpv_mono.yaml", "--from", "build/elpv-mono",
                                  "--data", str(LABELLED)]),
            ("elpv-mono-poly", [ep, "build", "bench/configs/elpv_mono_poly.yaml"])]


def builds() -> None:
    """Run the four builds; exit 3 (an artifact failed a gate) is a result the table reports, not an error."""
    import subprocess
    import time

    walls = {}
    for name, cmd in _commands():
        if name == "elpv-mono-adabn":
            shutil.rmtree(REPO / "build" / name, ignore_errors=True)
            shutil.copytree(REPO / "build/elpv-mono", REPO / "build" / name)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        walls[name] = {"wall_s": round(time.perf_counter() - t0, 1), "exit_code": rc}
        print(name, walls[name])
        if rc not in (0, 3):
            raise SystemExit(f"{' '.join(cmd)} exited {rc}")
    (FIELD / "walls.json").write_text(json.dumps(walls, indent=2) + "\n")


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


def measure() -> None:
    from edgepipe.core.metrics import machine_info
    from edgepipe.pipeline.data import catalog
    from edgepipe.pipeline.config import load_config

    update = json.loads((REPO / "build/elpv-mono-update/report.json").read_text())
    root = catalog(load_config(REPO / "bench/configs/elpv_mono.yaml").dataset).root
    mono = [(root / t["id"], t["label"]) for t in update["test_set"] if t["domain"] == "dataset"]
    poly = [(LABELLED / t["id"].removeprefix("field/"), t["label"]) for t in update["test_set"] if t["domain"] == "field"]
    walls = json.loads((FIELD / "walls.json").read_text()) if (FIELD / "walls.json").exists() else {}
    out = {"date": dt.date.today().isoformat(), "machine": machine_info(2), "mono_test": len(mono),
           "poly_test": len(poly), "walls": walls, "rows": []}
    for title, name in BUILDS.items():
        report = json.loads((REPO / "build" / name / "report.json").read_text())
        gates = {}
        for g in report["gates"]:
            gates.setdefault(g["artifact"], []).append(g)
        for precision in ("fp32", "int8"):
            artifact = f"onnxruntime-{precision}"
            bundle = REPO / "dist" / name / artifact
            failed = [f"{g['gate']}" for g in gates.get(artifact, []) if g["status"] == "failed"]
            row = {"build": title, "artifact": artifact, "mono": _accuracy(bundle, mono), "poly": _accuracy(bundle, poly),
                   "gates": "pass" if not failed else "FAIL: " + ", ".join(failed), "adapt": report.get("adapt"),
                   "build_wall_s": walls.get(name, {}).get("wall_s"),
                   "stage_wall_s": _stages(name)}
            out["rows"].append(row)
            print(json.dumps(row))
    dest = REPO / "bench/results/field_loop_update"
    dest.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Field loop, update and AdaBN: ELPV mono -> poly ({out['date']})", "",
             f"Bundles run by the Predictor on release 1's {len(mono)} mono test cells and on the {len(poly)} poly "
             f"test cells of the update's field split; one seed (0); machine {out['machine']['cpu']}.", "",
             "| build | artifact | mono test | poly test | its gates | build wall |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['build']} | {r['artifact']} | {r['mono']:.2%} | {r['poly']:.2%} | {r['gates']} | "
              f"{_seconds(r['build_wall_s'])} |" for r in out["rows"]]
    lines += ["", "Stage wall times (s): " + "; ".join(
        f"{r['build']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["stage_wall_s"].items() if v)
        for r in out["rows"][::2])]
    dest.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["prepare", "builds", "measure"])
    {"prepare": prepare, "builds": builds, "measure": measure}[ap.parse_args().step]()
