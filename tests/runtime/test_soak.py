"""Soak: 10,000 predictions through edgepipe.Predictor on a real bundle, memory flat, no error.

Not in the default run (marker `soak`): `.venv/bin/pytest -m soak -s tests/runtime/test_soak.py`.
The bundle comes from a real build (EfficientNet-Lite0 at 224 px, ONNX Runtime int8) of a small
stripes dataset; the predictions run in a torch-free child process (tests/runtime/soak_predict.py)
so that the RSS measured is the runtime's. Growth is measured from the end of the 1,000-prediction
warm-up to the end.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from tests.conftest import write_tiny_project

PREDICTIONS, MAX_GROWTH = 10_000, 0.05
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("soak")
    config = write_tiny_project(root, model={"image_size": 224}, targets=[{"name": "onnxruntime", "precisions": ["int8"]}])
    result = CliRunner().invoke(cli, ["build", str(config)])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.soak
def test_ten_thousand_predictions_keep_memory_flat(project):
    proc = subprocess.run([sys.executable, "-m", "tests.runtime.soak_predict", str(project / "dist" / "tiny" / "onnxruntime-int8"),
                           str(project / "data"), str(PREDICTIONS)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=3000, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    start, end = r["rss_every_1000"][0], r["rss_every_1000"][-1]
    growth = (end - start) / start
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    print("\nsoak " + json.dumps({
        "predictions": r["predictions"], "errors": r["error_count"], "image_errors_raised": r["image_errors_raised"],
        "wall_s": r["wall_s"], "ms_per_prediction": round(r["wall_s"] / r["predictions"] * 1e3, 2),
        "rss_mb_loaded": mb(r["rss_loaded"]), "rss_mb_start": mb(start), "rss_mb_end": mb(end),
        "growth_pct": round(growth * 100, 3), "growth_bytes_per_prediction": round((end - start) / (PREDICTIONS - 1000), 1),
        "rss_mb_every_1000": [mb(x) for x in r["rss_every_1000"]]}))
    assert not r["torch_loaded"]
    assert r["error_count"] == 0, r["errors"]
    assert r["image_errors_raised"] == PREDICTIONS // 500
    assert growth < MAX_GROWTH
