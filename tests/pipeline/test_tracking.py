"""MLflow tracking: with `tracking.mlflow` the build logs one run per new report (config, per-artifact
metrics, the training curve, the reports); without it nothing is written; MLflow missing is a
one-line error before any stage runs."""

import importlib.util
import json

import pytest

from edgepipe.pipeline.tracking import artifact_metrics, flat_params
from tests.pipeline.conftest import build, manifest
from tests.pipeline.reports import synthetic_report


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = [e for e in client.search_experiments() if e.name == "tiny"]
    return client, client.search_runs([exps[0].experiment_id]) if exps else []


@pytest.mark.parametrize("store", ["mlruns", "sqlite:///mlflow.db"])
def test_a_build_logs_one_run_per_new_report(project, store):
    root, configure = project
    assert build(configure()).exit_code == 0  # settled in this folder (the copy moved its paths)
    result = build(configure(tracking={"mlflow": store}))
    assert result.exit_code == 0, result.output
    # only the track stage ran: where runs are logged does not rewrite the report or the bundles
    assert manifest(root)["last_run"]["ran"] == ["track"]
    uri = str(root / "mlruns") if store == "mlruns" else f"sqlite:///{root / 'mlflow.db'}"
    client, runs = _runs(uri)
    assert len(runs) == 1
    run = runs[0]
    report = json.loads((root / "out" / "report.json").read_text())
    int8 = next(r for r in report["rows"] if r["name"] == "onnxruntime-int8")
    assert run.data.metrics["onnxruntime-int8.accuracy"] == pytest.approx(int8["accuracy"])
    assert run.data.metrics["passed"] == 1.0
    assert run.data.params["model.image_size"] == "32" and run.data.params["name"] == "tiny"
    assert run.data.tags["edgepipe.config_sha256"] == report["config_sha256"]
    curve = json.loads((root / "out" / "finetune" / "curve.json").read_text())
    history = client.get_metric_history(run.info.run_id, "train.val_accuracy")
    assert [m.value for m in history] == pytest.approx([c["val_accuracy"] for c in curve])
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md", "report.html"} <= logged
    recorded = json.loads((root / "out" / "tracking" / "mlflow.json").read_text())
    assert recorded["run_id"] == run.info.run_id
    # nothing changed: no second run
    assert build(root / "build.yaml").exit_code == 0
    assert len(_runs(uri)[1]) == 1


def test_without_the_section_nothing_is_tracked(project):
    root, configure = project
    assert build(configure()).exit_code == 0
    assert not (root / "out" / "tracking").exists() and not (root / "mlruns").exists()
    assert manifest(root)["stages"]["track"]["metrics"] == {"mlflow": None}


def test_mlflow_missing_is_an_error_before_any_stage(project, monkeypatch):
    root, configure = project
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    before = manifest(root)["stages"]
    result = build(configure(tracking={"mlflow": "mlruns"}, gates={"max_accuracy_drop": 0.5}))
    assert result.exit_code == 2 and "pip install 'edgepipe[tracking]'" in result.output
    assert manifest(root)["stages"] == before


def test_params_and_metrics_are_flat_and_within_mlflow_limits():
    params = flat_params({"model": {"backbone": "x", "image_size": 32}, "targets": [{"name": "a"}], "long": "y" * 900})
    assert params["model.backbone"] == "x" and params["model.image_size"] == "32"
    assert params["targets"] == '[{"name": "a"}]' and len(params["long"]) == 500
    metrics = artifact_metrics(synthetic_report())
    assert metrics["onnxruntime-int8.accuracy"] == pytest.approx(0.87)
    assert metrics["torch-fp32.latency_p50_ms"] == 10.0 and metrics["failed_gates"] == 0


def test_a_store_mlflow_cannot_write_is_exit_2_with_the_fix_and_the_report_kept(project):
    root, configure = project
    (root / "blocker").write_text("a file where the store's folder should be")
    assert build(configure()).exit_code == 0  # settled in this folder (the copy moved its paths)
    report = (root / "out" / "report.json").read_bytes()
    result = build(configure(tracking={"mlflow": "blocker"}))
    assert result.exit_code == 2, result.output
    assert "MLflow" in result.output and "rerun `edgepipe build`" in result.output
    assert (root / "out" / "report.json").read_bytes() == report
    # the track stage keeps its previous record (no tracking), so the next build tries again
    assert manifest(root)["stages"]["track"]["metrics"] == {"mlflow": None}
    assert build(root / "build.yaml").exit_code == 2
