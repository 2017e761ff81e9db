"""Each stage's input key, for incremental builds, from what pipeline/stages.py says it reads.

A stage is up to date when the key computed now equals the key recorded when it last completed
and its outputs still hash as recorded (`Manifest.stale_reason`). The key covers the config
sections the stage reads, the recorded hashes of the upstream outputs it reads, the dataset
fingerprint (file bytes, labels, split and preprocessing settings: no image is decoded), and the
versions of the tools it runs. A stage missing from the registry gets the conservative default:
the whole config, every earlier stage's outputs, the dataset and every tool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from edgepipe.core.errors import MissingArtifactError
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import TOOLS, Manifest, tool_versions
from edgepipe.pipeline.stages import ALL, REGISTRY

KEY_FORMAT = "1"  # bump when the meaning of a key changes: every stage reruns once

def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _upstream(manifest: Manifest, stage: str, names: tuple[str, ...] | None) -> dict[str, str]:
    """Recorded hashes of what `stage` produced (each file checked against its hash on the way)."""
    if names is not ALL:
        return {f"{stage}.{n}": manifest.sha256(manifest.output(stage, n)) for n in names}
    entry = manifest.data["stages"].get(stage, {})
    if "outputs" not in entry:
        raise MissingArtifactError(f"{manifest.path} records no {stage} outputs",
                                   f"run `edgepipe build` with this config (it runs {stage} and what it needs)")
    for n in entry["outputs"]:
        manifest.output(stage, n)
    return {f"{stage}.outputs": digest({"outputs": {n: o["sha256"] for n, o in entry["outputs"].items()},
                                        "artifacts": entry.get("artifacts")})}


def stage_inputs(stage: str, cfg: BuildConfig, manifest: Manifest, stages: tuple[str, ...],
                 dataset_fingerprint: Callable[[], str]) -> dict[str, str]:
    """Component -> digest; the stage's key is the digest of this dict. `stages` is the pipeline
    order (the default for a stage not listed above reads every stage before it)."""
    spec = REGISTRY.get(stage)
    parts = {"key_format": KEY_FORMAT}
    config = spec.config(cfg) if spec else {"sha256": cfg.sha256()}
    parts |= {f"config.{k}": digest(v) for k, v in config.items()}
    earlier = {s: ALL for s in stages[:stages.index(stage)] if s in manifest.data["stages"]} if stage in stages else {}
    for up, names in (spec.reads if spec else earlier).items():
        if up in REGISTRY and REGISTRY[up].active is not None and not REGISTRY[up].active(cfg):
            continue  # an optional stage this config does not use (no adapt section, no update)
        parts |= _upstream(manifest, up, names)
    if spec is None or spec.dataset:
        parts["dataset"] = dataset_fingerprint()
    parts["tools"] = digest(tool_versions(("edgepipe",) + (spec.tools if spec else TOOLS)))
    if spec is not None and spec.machine:  # latency is a property of the machine it was measured on
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
    if entry.get("status") == "recorded":  # it wrote its outputs, then failed (e.g. export parity)
        return f"the last run of {stage} did not complete"
    if "inputs" not in entry:  # built by an edgepipe without input keys: nothing to compare
        return None
    now = stage_inputs(stage, cfg, manifest, stages, dataset_fingerprint)
    old = entry["inputs"]
    changed = [k for k in sorted(set(now) | set(old)) if k not in _ENVIRONMENT and now.get(k) != old.get(k)]
    return f"inputs changed since it ran: {', '.join(changed)}" if changed else None
