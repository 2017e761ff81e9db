"""Incremental builds: each stage reruns exactly when one of its inputs changed, or was forced.

"Ran" is read from the manifest (`last_run`), never from wall time. The stages asserted are
issue 6's five; the bundle stage after them is keyed too, and is checked where nothing changed.
Every test starts from a copy of the build that test_resume's fixture finished.
"""

import json

import pytest
from click.testing import CliRunner

import edgepipe.pipeline.data
from edgepipe.cli import cli
from edgepipe.core.files import sha256_file
from edgepipe.pipeline.stages import STAGES
from tests.pipeline.conftest import build, manifest, ran


@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("prepare() decoded the dataset, but no stage that reads images had to run")

    monkeypatch.setattr(edgepipe.pipeline.data, "prepare", refuse)


def test_unchanged_build_is_up_to_date_everywhere_and_decodes_no_image(base, no_decoding):
    before = manifest(base)["stages"]
    result = build(base / "build.yaml")
    assert result.exit_code == 0, result.output
    last = manifest(base)["last_run"]
    assert last["ran"] == [] and last["up_to_date"] == list(STAGES)
    for stage in STAGES:
        assert f"{stage}: up to date (key {before[stage]['key'][:12]}" in result.stderr
    assert "all gates passed" in result.stderr  # the stored report is shown again
    assert manifest(base)["stages"] == before


def test_new_gates_reevaluate_the_report_only(project, no_decoding):
    root, configure = project
    results = sha256_file(root / "out" / "verify" / "results.json")
    result = build(configure(gates={"max_accuracy_drop": 1.0, "min_agreement": 0.0, "max_latency_ms": 1e-6}))
    assert result.exit_code == 3, result.output
    assert ran(root) == ["report"]
    assert "report: running (inputs changed: config.sha256" in result.stderr
    assert sha256_file(root / "out" / "verify" / "results.json") == results
    report = json.loads((root / "out" / "report.json").read_text())
    assert any(g["gate"] == "max_latency_ms" and g["status"] == "failed" for g in report["gates"])


def test_a_target_gate_override_is_not_a_rebuild(project, no_decoding):
    root, configure = project
    result = build(configure(targets=[{"name": "onnxruntime", "gates": {"min_agreement": 0.0}}]))
    assert result.exit_code == 0, result.output
    assert ran(root) == ["report"]


def test_new_calibration_size_reruns_quantize_and_after_not_finetune_or_export(project):
    root, configure = project
    kept = {p: sha256_file(root / "out" / p) for p in ("finetune/model.pt", "export/model.onnx")}
    result = build(configure(calibration={"size": 10}))
    assert result.exit_code == 0, result.output
    assert ran(root) == ["quantize", "verify", "report"]
    assert "quantize: running (inputs changed: config.calibration;" in result.stderr
    assert "finetune: up to date" in result.stderr and "export: up to date" in result.stderr
    assert {p: sha256_file(root / "out" / p) for p in kept} == kept
    assert manifest(root)["stages"]["quantize"]["metrics"]["calibration_images"] == 10


def test_force_reruns_that_stage_and_every_later_one(project):
    root, configure = project
    result = build(configure(), "--force", "verify")
    assert result.exit_code == 0, result.output
    assert ran(root) == ["verify", "report"]
    assert "verify: running (forced from verify;" in result.stderr and "quantize: up to date" in result.stderr


def test_force_of_an_unknown_stage_exits_2(project):
    _, configure = project
    result = build(configure(), "--force", "compile")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --force compile: no such stage (fix: choose one of: {', '.join(STAGES)})")


def test_a_partial_file_under_a_final_name_is_rebuilt_not_trusted(project):
    root, configure = project
    results = root / "out" / "verify" / "results.json"
    results.write_bytes(results.read_bytes()[:500])  # as a non-atomic writer killed mid-file would leave it
    result = build(configure())
    assert result.exit_code == 0, result.output
    assert "verify: running (output verify/results.json is missing or changed;" in result.stderr
    assert ran(root) == ["verify", "report"]
    assert sha256_file(results) == manifest(root)["stages"]["verify"]["outputs"]["results"]["sha256"]
    json.loads(results.read_text())


def test_single_stage_commands_always_run_and_keep_the_build_current(project):
    root, configure = project
    result = CliRunner().invoke(cli, ["report", str(configure())])
    assert result.exit_code == 0, result.output
    assert ran(root) == ["report"] and "report: running (requested;" in result.stderr
    assert build(configure()).exit_code == 0
    assert ran(root) == []  # the stage command recorded its key: nothing is stale

