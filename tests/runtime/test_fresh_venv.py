"""Slow (pip installs, ~1 min per backend; run with `pytest -m slow`): a fresh venv with only
`edgepipe[runtime]` and one backend runs the tiny build's bundles and reproduces their accuracy.
bench/runtime_venv_check.py does the same for a real build's bundles and test split."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("backend, bundle", [("onnxruntime", "onnxruntime-int8"), ("openvino", "openvino-fp32")])
def test_runtime_only_venv_reproduces_the_bundle_accuracy(tiny_build, tmp_path, backend, bundle):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", f"{REPO}[runtime]", backend], check=True)
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, check=False).returncode != 0
    folder = tiny_build["dist"] / bundle
    check = subprocess.run([str(venv / "bin" / "edgepipe"), "check", str(folder), str(tiny_build["images"]), "--json"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    verified = json.loads((folder / "bundle.json").read_text())["verified"]
    assert json.loads(check.stdout)["confusion"] == verified["confusion"]
    bench = subprocess.run([str(venv / "bin" / "edgepipe"), "bench", str(folder), "--json"], capture_output=True, text=True, check=False)
    assert bench.returncode == 0 and json.loads(bench.stdout)["latency_ms"]["runs"] == verified["method"]["runs"]
