"""Runs stages in order: data -> finetune -> adapt -> export -> quantize -> verify -> previous ->
explain -> reference -> report -> bundle -> track (pipeline/stages.py).

Each stage reads what earlier stages recorded in the manifest (checked by hash) and records its
own outputs, so any stage can also run alone once its inputs exist. `edgepipe build` is
incremental: a stage whose input key (pipeline/keys.py) matches its last complete run, and whose
outputs still hash as recorded, is skipped; images are decoded only when a stage has to run.
A stage is marked running before it writes and complete after it returns, so a build killed at
any point resumes at the first stage that did not complete.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgepipe.core.console import console
from edgepipe.core.errors import EdgepipeError, MissingArtifactError
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import Manifest, sweep_stale_temps
from edgepipe.pipeline.stages import REGISTRY, STAGES, StageRun


class _Dataset:
    """The dataset, at most once per build and only when asked for: its fingerprint (file bytes,
    no decoding) for the keys, the decoded images for a stage that runs."""

    def __init__(self, cfg: BuildConfig, manifest: Manifest | None):
        from edgepipe.pipeline.backbones import preprocess_spec

        self.cfg, self.manifest = cfg, manifest
        self.spec = preprocess_spec(cfg.model.backbone, cfg.model.image_size)
        self._fingerprint = self._data = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from edgepipe.pipeline.data import fingerprint

            self._fingerprint = fingerprint(self.cfg.dataset, self.spec, self.cfg.seed)
        return self._fingerprint

    def data(self):
        if self._data is None:
            from edgepipe.pipeline.data import prepare

            data = prepare(self.cfg.dataset, self.spec, self.cfg.seed)
            if self.manifest is not None:  # None: a torchrun worker, which writes nothing
                self.manifest.record_dataset(data.summary())
            console.print(f"dataset {self.cfg.dataset.source}: {len(data.labels)} images, classes "
                          f"{', '.join(data.classes)}, split {data.split.sizes()}")
            self._data = data
        return self._data


def run_worker_rank(cfg: BuildConfig) -> None:
    """A torchrun worker (rank > 0) of `edgepipe finetune`: the same data, its slice of every batch.
    It takes no lock and writes nothing; rank 0 runs the stage itself through run_stages."""
    from edgepipe.pipeline import distributed
    from edgepipe.pipeline.finetune import run_finetune

    distributed.quiet_unless_main(distributed.from_env())
    run_finetune(cfg, _Dataset(cfg, None).data(), None)


def run_stages(cfg: BuildConfig, stages: tuple[str, ...], junit: Path | None = None, *,
               incremental: bool = False, force_from: str | None = None, sign_key: Path | None = None) -> int:
    """Run `stages` (a subsequence of STAGES); returns the exit code (0, or 3 when a gate fails).

    incremental: skip each stage that is up to date (`edgepipe build`); otherwise every listed stage
    runs (the single-stage commands), after checking that the earlier stages it builds on are
    current. force_from: that stage and every later one run regardless. sign_key: an Ed25519
    private key (PEM) that signs every bundle the bundle stage writes. The output dir is locked
    for the whole run."""
    from edgepipe.pipeline.ownership import build_lock, claim_dist

    if force_from is not None and force_from not in STAGES:
        raise EdgepipeError(f"--force {force_from}: no such stage", f"choose one of: {', '.join(STAGES)}")
    if junit is not None:  # before hours of work, and before a typo overwrites the config or an image
        from edgepipe.runtime.cli_io import refuse_foreign_output

        refuse_foreign_output(junit, "--junit", "a JUnit XML report", (b"<?xml", b"<testsuite"), devices_ok=False)
    for stage in stages:  # e.g. a missing baseline: said now, not after the fine-tune
        if REGISTRY[stage].precheck is not None:
            REGISTRY[stage].precheck(cfg)
    signer = None
    bundles = any(REGISTRY[s].writes_bundles for s in stages)
    if sign_key is not None and bundles:  # a bad key fails now, not after the whole build
        from edgepipe.runtime.signing import key_id, load_private_key

        signer = key_id(load_private_key(sign_key).public_key())
    with build_lock(cfg.output_dir):
        if bundles and cfg.bundle.enabled:  # before hours of work, not after
            claim_dist(cfg.bundle.dist_dir / cfg.name, cfg.output_dir, cfg.name)
        return _run_locked(cfg, stages, junit, incremental, force_from, sign_key, signer)


def _run_locked(cfg: BuildConfig, stages: tuple[str, ...], junit: Path | None, incremental: bool,
                force_from: str | None, sign_key: Path | None, signer: str | None) -> int:
    from edgepipe.pipeline.keys import stage_inputs, stage_key, upstream_changes

    t0 = time.perf_counter()
    manifest = Manifest.open(cfg)
    if removed := sweep_stale_temps(cfg.output_dir):
        console.print(f"removed {len(removed)} temp file(s) left by a killed build, e.g. {removed[0].name}")
    ds = _Dataset(cfg, manifest)
    if not incremental:
        _refuse_stale_upstream(cfg, stages, manifest, ds, upstream_changes)
    forced = set(stages[stages.index(force_from):]) if force_from in stages else set()
    run = StageRun(cfg, manifest, ds.data, junit, sign_key)
    code, ran, current = 0, [], []
    for stage in stages:
        inputs = stage_inputs(stage, cfg, manifest, STAGES, ds.fingerprint)
        key = stage_key(inputs)
        if stage in forced:
            why = f"forced from {force_from}"
        else:
            why = manifest.stale_reason(stage, key, inputs) if incremental else "requested"
        spec = REGISTRY[stage]
        if why is None and spec.writes_bundles and signer is not None:  # a signature is not a stage input
            if any(b.get("signed_by") != signer for b in manifest.data["stages"][stage].get("bundles", [])
                   if b.get("gates_passed") is not False):  # a bundle that failed its gates stays unsigned
                why = f"--sign: the bundles are not signed by key {signer}"
        if why is None:
            console.print(f"{stage}: up to date (key {key[:12]}…)")
            current.append(stage)
            if spec.replay is not None:  # e.g. the report: exit code, table and JUnit from the stored one
                code = max(code, spec.replay(run))
            continue
        console.rule(f"[bold]{stage}")
        console.print(f"{stage}: running ({why}; key {key[:12]}…)")
        started = time.perf_counter()
        previous = manifest.begin_stage(stage, key)
        try:
            rc = spec.run(run)
        except EdgepipeError:
            # Bad input (data, config, a missing artifact) found before the stage wrote anything:
            # the stage was not interrupted, so the next run must not say it was.
            manifest.abandon_stage(stage, previous)
            raise
        code = max(code, rc)  # only the report's is non-zero (a failed gate)
        manifest.data.setdefault("stage_wall_s", {})[stage] = round(time.perf_counter() - started, 1)
        manifest.complete_stage(stage, key, inputs)
        ran.append(stage)
    wall = round(time.perf_counter() - t0, 1)
    manifest.data["last_run"] = {"ran": ran, "up_to_date": current, "wall_s": wall}
    manifest.data["wall_s"] = wall
    manifest.save()
    console.print(f"done in {wall:.0f} s (ran: {', '.join(ran) or 'nothing'}); manifest: {manifest.path}")
    return code


def _refuse_stale_upstream(cfg: BuildConfig, stages: tuple[str, ...], manifest: Manifest, ds: _Dataset,
                           upstream_changes) -> None:
    """A single-stage command runs on the outputs of the stages before it: refuse when one of those
    no longer matches the config, the dataset or its own inputs (e.g. `edgepipe verify` after the
    images changed would redraw the split and score the model on images it trained on)."""
    first = STAGES.index(stages[0])
    for upstream in STAGES[:first]:
        changed = upstream_changes(upstream, cfg, manifest, STAGES, ds.fingerprint)
        if changed:
            fix = f"run `edgepipe build` (it reruns {upstream} and every stage after it)"
            if REGISTRY[upstream].active is not None:  # an optional section, e.g. `build --adapt DIR` (one run only)
                fix = (f"give this command the config the build had: an option such as --adapt lasts one run "
                       f"(put its section, e.g. `adapt: {{images: DIR}}`, in the config to keep it), or {fix}")
            raise MissingArtifactError(
                f"`edgepipe {stages[0]}` would use {upstream} outputs that are out of date ({changed})", fix)
