"""Adding a backend is one folder and one registry line: tests/targets/reference_backend (the exported
ONNX on onnx's numpy reference evaluator) is registered here and goes through build, verify, report,
bundle, the Predictor and `edgepipe predict`, with no other module knowing its name."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import BundleError, ConfigError
from edgepipe.pipeline.config import load_config
from edgepipe.runtime import Predictor
from edgepipe.targets import REGISTRY
from tests.pipeline.conftest import build
from tests.targets.reference_backend.runner import ReferenceRunner

TARGETS = [{"name": "onnxruntime", "precisions": ["fp32"]}, {"name": "reference"}]


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(REGISTRY, "reference", "tests.targets.reference_backend")  # the one registry line


def test_a_new_backend_builds_verifies_bundles_and_predicts(project, registered, monkeypatch):
    root, configure = project
    batches = []
    infer = ReferenceRunner.infer_impl
    monkeypatch.setattr(ReferenceRunner, "infer_impl", lambda self, x: batches.append(len(x)) or infer(self, x))
    cfg = configure(targets=TARGETS, verify={"runs": 5, "warmup": 1, "throughput_batch": 8})
    result = build(cfg)
    assert result.exit_code == 0, result.output

    report = json.loads((root / "out" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    row, ort = rows["reference-fp32"], rows["onnxruntime-fp32"]
    assert row["status"] == "ok" and row["vs_parent"]["parent"] == "onnxruntime-fp32"
    assert row["agreement"] == 1.0 and row["accuracy"] == ort["accuracy"]
    assert row["throughput"]["batch"] == 4  # the runner's declared max_batch, not the config's 8
    assert batches and max(batches) <= ReferenceRunner.MAX_BATCH

    dist = root / "dist" / "tiny"
    meta = json.loads((dist / "reference-fp32" / "bundle.json").read_text())
    assert meta["target"] == "reference" and meta["model"]["format"] == "onnx (numpy reference evaluator)"
    assert meta["runtime"]["package"] == "onnx" and meta["verified"]["how"] == "measured"
    assert meta["gates"]["passed"] is True and (dist / "tiny-reference-fp32.tar.gz").is_file()

    images = sorted((root / "data").rglob("*.png"))[:6]
    with Predictor(dist / "reference-fp32") as new, Predictor(dist / "onnxruntime-fp32") as ort_p:
        assert new.runner.max_batch == 4 and new.batch_size == 4
        ours, theirs = new.predict(images), ort_p.predict(images)
    assert [p.label for p in ours] == [p.label for p in theirs]
    assert np.allclose([list(p.probabilities.values()) for p in ours],
                       [list(p.probabilities.values()) for p in theirs], atol=1e-4)
    cli_run = CliRunner().invoke(cli, ["predict", str(dist / "reference-fp32"), *map(str, images)])
    assert cli_run.exit_code == 0, cli_run.output
    assert [json.loads(line)["label"] for line in cli_run.stdout.splitlines()] == [p.label for p in ours]


def test_an_unregistered_backend_is_refused_by_name(project, write_config):
    root, configure = project
    with pytest.raises(ConfigError, match="unknown target 'reference': edgepipe builds for onnxruntime"):
        load_config(configure(targets=TARGETS))


def test_a_bundle_of_a_backend_this_edgepipe_lacks_is_refused(project, registered, monkeypatch):
    root, configure = project
    assert build(configure(targets=TARGETS)).exit_code == 0
    monkeypatch.delitem(REGISTRY, "reference")
    with pytest.raises(BundleError, match="unknown target 'reference'"):
        Predictor(root / "dist" / "tiny" / "reference-fp32")
