"""The field-unit check of issue 5: each bundle of a build, run from a fresh venv holding only
`edgepipe[runtime]` and one backend (no torch), must reproduce the build report's accuracy on the
test images exactly, and `edgepipe bench` must measure the latency verify measured.

Usage (build venv, after `make run`):
    .venv/bin/python bench/runtime_venv_check.py [--config examples/elpv.yaml] [--venvs /tmp/edgepipe-rt]

Per backend (openvino, onnxruntime) it creates <venvs>/<backend> with
`pip install -e '<repo>[runtime]' <backend>==<the build's version>`, exports the build's test split
to a labelled folder (bench/export_test_split.py), then per bundle runs `edgepipe predict`
(batch 1, JSON lines), `edgepipe check` and `edgepipe bench` in that venv. The TensorRT int8 bundle
runs as its ONNX Runtime proxy (--proxy), as the build verified it. Exit 1 if an accuracy differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from edgepipe.pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from export_test_split import main as export_test_split


def make_venv(path: Path, backend: str, version: str | None) -> Path:
    if not (path / "bin" / "edgepipe").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
        pin = f"=={version}" if version else ""
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", "-e", f"{REPO}[runtime]", f"{backend}{pin}"], check=True)
    torch = subprocess.run([str(path / "bin" / "python"), "-c", "import torch"], capture_output=True, check=False)
    if torch.returncode == 0:
        raise SystemExit(f"{path} can import torch: not a runtime-only venv")
    return path / "bin" / "edgepipe"


def run_bundle(edgepipe: Path, bundle: Path, images: Path, out: Path, proxy: bool) -> dict:
    extra = ["--proxy"] if proxy else []
    jsonl = out / f"{bundle.name}.jsonl"
    subprocess.run([str(edgepipe), "predict", str(bundle), str(images), "--jsonl", str(jsonl), *extra], check=True,
                   stderr=subprocess.DEVNULL)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    correct = sum(Path(ln["path"]).parent.name == ln.get("label") for ln in lines)
    check = json.loads(subprocess.run([str(edgepipe), "check", str(bundle), str(images), "--json", *extra], check=True,
                                      capture_output=True, text=True).stdout)
    bench = json.loads(subprocess.run([str(edgepipe), "bench", str(bundle), "--json", *extra], check=True,
                                      capture_output=True, text=True).stdout)
    return {"predict_accuracy": correct / len(lines), "predict_images": len(lines), "check_accuracy": check["accuracy"],
            "check_confusion": check["confusion"], "bench": bench}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "examples" / "elpv.yaml")
    ap.add_argument("--venvs", type=Path, default=Path("/tmp/edgepipe-rt"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    dist = cfg.bundle.dist_dir / cfg.name
    images = args.venvs / "test-images"
    if export_test_split([str(args.config), str(images)]):
        return 2
    failed = False
    print("| bundle | venv | report accuracy | predict | check | verify p50 / p95 / p99 ms | bench p50 / p95 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for bundle in sorted(p for p in dist.iterdir() if (p / "bundle.json").is_file()):
        meta = json.loads((bundle / "bundle.json").read_text())
        v, proxy = meta["verified"], meta["target"] == "tensorrt"
        if v["how"] == "none":
            print(f"| {bundle.name} | - | not verified | - | - | - | - |")
            continue
        backend = "onnxruntime" if proxy else meta["target"]
        edgepipe = make_venv(args.venvs / backend, backend, meta["tool_versions"].get(backend))
        r = run_bundle(edgepipe, bundle, images, args.venvs, proxy)
        same = r["predict_accuracy"] == r["check_accuracy"] == v["accuracy"] and r["check_confusion"] == v["confusion"]
        failed |= not same
        lat = lambda d: " / ".join(f"{d[k]:.2f}" for k in ("p50", "p95", "p99"))
        print(f"| {bundle.name}{' (proxy)' if proxy else ''} | {backend} | {v['accuracy']:.2%} | "
              f"{r['predict_accuracy']:.2%} ({r['predict_images']} img) | {r['check_accuracy']:.2%}"
              f"{'' if same else ' MISMATCH'} | {lat(v['latency_ms'])} | {lat(r['bench']['latency_ms'])} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
