"""Track stage: with `tracking.mlflow` in the config, one MLflow run per build that produced a new
report: the config as parameters, per-artifact metrics, the training curve as stepped metrics, and
report.json / report.md / report.html as artifacts. Without the section it does nothing.

MLflow is an extra (`pip install 'edgepipe[tracking]'`), imported only here. A plain folder is
MLflow's file store, which works offline; MLflow 3 refuses it unless MLFLOW_ALLOW_FILE_STORE is
set, so edgepipe sets it for a folder the user named (it is the store they asked for).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

from edgepipe.core.console import console
from edgepipe.core.errors import ConfigError, EdgepipeError
from edgepipe.core.files import write_json
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import Manifest, package_version

MAX_PARAM = 500  # MLflow's limit on a parameter's value, in characters


class TrackingError(EdgepipeError):
    """MLflow refused to log (server down, bad URI, full disk): the environment's problem, exit 2."""


def require_mlflow(cfg: BuildConfig) -> None:
    if cfg.tracking is not None and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("tracking.mlflow is set but MLflow is not installed",
                          "pip install 'edgepipe[tracking]', or remove the tracking section")


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The config as MLflow parameters: nested keys joined with dots, lists as JSON, long values cut."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flat_params(v, key + ".")
        else:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = text if len(text) <= MAX_PARAM else text[:MAX_PARAM - 1] + "…"
    return out


def artifact_metrics(report: dict) -> dict[str, float]:
    """`<artifact>.<metric>` for each row that ran, plus the build's verdict."""
    out = {"passed": float(report["passed"]), "failed_gates": float(sum(g["status"] == "failed" for g in report["gates"]))}
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        values = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "agreement": r["agreement"],
                  "accuracy_delta": r["accuracy_delta"], "size_mb": r["size_bytes"] / 1e6,
                  **{f"latency_{k}_ms": r["latency_ms"][k] for k in ("p50", "p95", "p99")},
                  "images_per_s": r["throughput"]["images_per_s"]}
        out |= {f"{r['name']}.{k}": float(v) for k, v in values.items() if v is not None}
    return out


def _store(uri: str) -> str:
    if "://" not in uri and not uri.startswith("file:"):  # a folder: MLflow's file store
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        Path(uri).mkdir(parents=True, exist_ok=True)
    return uri


def _experiment(client, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # else artifacts land in ./mlartifacts of whatever folder the build ran in
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def run_track(cfg: BuildConfig, manifest: Manifest) -> None:
    out = cfg.output_dir / "tracking" / "mlflow.json"
    if cfg.tracking is None:
        manifest.record_stage("track", {}, {"mlflow": None})
        return
    require_mlflow(cfg)
    from mlflow.tracking import MlflowClient

    report = manifest.read_json("report", "report_json")
    uri = cfg.tracking.mlflow
    experiment = cfg.tracking.experiment or cfg.name
    try:
        client = MlflowClient(tracking_uri=_store(uri))
        exp_id = _experiment(client, experiment, uri)
    except Exception as e:
        raise TrackingError(f"MLflow at {uri} refused experiment '{experiment}': {type(e).__name__}: {e}".splitlines()[0],
                            "check tracking.mlflow (a folder, sqlite:///file.db or a server URI) and rerun "
                            "`edgepipe build`: only the track stage reruns") from e
    tags = {"edgepipe.version": package_version("edgepipe") or "unknown", "edgepipe.config_sha256": report["config_sha256"],
            "edgepipe.passed": str(report["passed"]).lower(), "edgepipe.output_dir": str(cfg.output_dir)}
    try:
        run_id = _log(client, exp_id, cfg, manifest, report, tags)
    except Exception as e:  # a server down, a full disk, a store of another MLflow version: not a bug here
        raise TrackingError(f"MLflow could not log this build to {uri}: {type(e).__name__}: {e}".splitlines()[0],
                            "check tracking.mlflow (or remove the section) and rerun `edgepipe build`: only the "
                            "track stage reruns; report.json and its gates are already written") from e
    write_json(out, {"tracking_uri": uri, "experiment": experiment, "experiment_id": exp_id, "run_id": run_id})
    manifest.record_stage("track", {"run": out}, {"mlflow_run": run_id})
    console.print(f"MLflow: run {run_id} in experiment '{experiment}' at {uri}")


def _log(client, exp_id: str, cfg: BuildConfig, manifest: Manifest, report: dict, tags: dict) -> str:
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(exp_id, run_name=f"{cfg.name} {report['created']}", tags=tags)
    run_id = run.info.run_id
    try:
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, 0) for k, v in artifact_metrics(report).items()]
        curve = json.loads(manifest.output("finetune", "curve").read_text())
        for step, point in enumerate(curve):  # one step per epoch, warm-up first
            metrics += [Metric(f"train.{k}", float(point[k]), stamp, step) for k in ("train_loss", "val_accuracy")
                        if point.get(k) is not None]
        params = [Param(k, v) for k, v in flat_params(manifest.data["config"]).items()]
        for i in range(0, max(len(params), len(metrics)), 100):  # log_batch takes at most 100 params per call
            client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100],
                             tags=[RunTag("edgepipe.name", cfg.name)] if i == 0 else [])
        for name in ("report_json", "report_md", "report_html"):
            if name in manifest.data["stages"]["report"]["outputs"]:
                client.log_artifact(run_id, str(manifest.output("report", name)))
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
