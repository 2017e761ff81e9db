"""`edgepipe update`: a new release that starts from the previous one.

The previous release is its build folder (output_dir): its manifest names its fine-tuned float
model, which becomes finetune.init_checkpoint with update.start "previous", the default (the model
before any AdaBN it ran: labelled field data replaces the adaptation, and the old data trains under
the statistics it was trained with), and
its report.json, which becomes the baseline. The new labelled field images are dataset.field: the
fine-tune trains on the dataset again plus them (rehearsal: it must not forget the old data), and
the report compares the new release with the previous one on the dataset's test images (no
regression beyond gates.baseline.max_accuracy_drop) and on the field test images (the stage
`previous` runs the previous release's models on those; gain at least update.min_field_gain).
With update.start "pretrained" (`--start pretrained`) the fine-tune starts from the backbone's
pretrained weights instead, on the same data, checked and gated the same way.
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.core.errors import ConfigError, EdgepipeError
from edgepipe.pipeline.config import BaselineConfig, BuildConfig, FieldDataConfig, UpdateConfig, revalidated
from edgepipe.pipeline.manifest import Manifest, _read_manifest


def previous_manifest(previous: Path) -> Manifest:
    """The previous release's manifest, read only; ConfigError (exit 2) when PREVIOUS is no build folder."""
    path = previous / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"the previous release {previous} holds no manifest.json: it is not an edgepipe build folder",
                          "pass --from the previous release's output_dir (the folder its `edgepipe build` wrote)")
    try:
        return Manifest(previous, _read_manifest(path))
    except EdgepipeError as e:
        raise ConfigError(f"the previous release: {e.problem}", "pass --from an intact build folder") from None


def with_update(cfg: BuildConfig, previous: Path, data: Path, out_dir: Path | None = None,
                name: str | None = None, start: str | None = None) -> BuildConfig:
    """cfg as `edgepipe update CONFIG --from PREVIOUS --data NEW [--out DIR] [--name NAME] [--start S]` means it.
    It writes to PREVIOUS-update, named <previous release's name>-update, unless --out / --name say
    otherwise: never to the config's output_dir, which holds an earlier release when PREVIOUS is
    itself an update (build/elpv-update's update must not rebuild build/elpv)."""
    previous = previous.resolve()
    if not data.exists():
        raise ConfigError(f"--data {data} does not exist",
                          "pass a folder with one sub-folder per class, or a csv file with path,label columns")
    field = (FieldDataConfig(source="csv", csv=data.resolve(), root=data.resolve().parent) if data.is_file()
             else FieldDataConfig(source="imagefolder", root=data.resolve()))
    out = out_dir.resolve() if out_dir is not None else previous.with_name(previous.name + "-update")
    new_name = name or f"{_release_name(previous, cfg.name)}-update"
    limits = {} if cfg.gates.baseline is None else cfg.gates.baseline.model_dump(exclude={"report"})
    # the config's update section (min_field_gain, start) stays, --start over it
    kept = {} if cfg.update is None else cfg.update.model_dump(include={"min_field_gain", "start"})
    kept.update({} if start is None else {"start": start})
    return revalidated(cfg.model_copy(update={
        "name": new_name, "output_dir": out,
        "dataset": cfg.dataset.model_copy(update={"field": field}),
        "update": UpdateConfig(previous=previous, **kept),
        "gates": cfg.gates.model_copy(update={"baseline": BaselineConfig(report=previous / "report.json", **limits)}),
        "finetune": cfg.finetune.model_copy(update={"init_checkpoint": None}),
    }), "edgepipe update")


def _release_name(previous: Path, default: str) -> str:
    import json

    try:
        return str(json.loads((previous / "report.json").read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return default  # resolve_update says what is wrong with the folder


def _check_complete(manifest: Manifest, previous: Path) -> None:
    """A release is a build whose every stage completed: an interrupted one may hold a model its
    report does not describe."""
    stages = manifest.data["stages"]
    unfinished = [s for s, e in stages.items() if e.get("status") != "complete"]
    if "report" not in stages or unfinished:
        why = f"its stage(s) {', '.join(unfinished)} did not complete" if unfinished else "it has no report"
        raise ConfigError(f"the previous release {previous} is not a finished build: {why}",
                          f"finish it first (`edgepipe build` with its config), or pass --from a finished release")


def resolve_update(cfg: BuildConfig) -> BuildConfig:
    """With an `update` section: the previous release's float model as finetune.init_checkpoint
    (unless update.start is "pretrained") and its report.json as the baseline, where the config
    does not name them. Checked now, before any
    stage: the output folder must not be the previous release's (its report would be overwritten)."""
    if cfg.update is None:
        return cfg
    from edgepipe.pipeline.compare import report_file

    previous = cfg.update.previous
    if cfg.output_dir.resolve() == previous.resolve():
        raise ConfigError(f"the update would write into the previous release's folder {previous}",
                          "give the update its own folder: --out DIR (or another output_dir)")
    if cfg.finetune.init_checkpoint is not None:
        raise ConfigError(f"finetune.init_checkpoint {cfg.finetune.init_checkpoint} and an update from {previous}: "
                          "an update starts from the previous release's model or from pretrained weights "
                          "(update.start)", "drop finetune.init_checkpoint")
    checkpoint = previous_checkpoint(previous)
    own = previous / "report.json"
    baseline = cfg.gates.baseline or BaselineConfig(report=own)
    if report_file(baseline.report).resolve() != own.resolve():
        raise ConfigError(f"gates.baseline.report {baseline.report} is not the report of the previous release "
                          f"{previous}: an update is gated against the release it starts from",
                          "drop gates.baseline.report (the update uses PREVIOUS/report.json; its limits stay)")
    start = {"init_checkpoint": checkpoint} if cfg.update.start == "previous" else {}
    return cfg.model_copy(update={
        "finetune": cfg.finetune.model_copy(update=start),
        "gates": cfg.gates.model_copy(update={"baseline": baseline})})


def previous_checkpoint(previous: Path) -> Path:
    """The previous release's fine-tuned float model; ConfigError (exit 2) when the folder is not a
    finished build or the file is not the one its manifest recorded."""
    manifest = previous_manifest(previous)
    _check_complete(manifest, previous)
    try:
        return manifest.output("finetune", "checkpoint")  # checked against its recorded hash
    except EdgepipeError as e:
        raise ConfigError(f"the previous release {previous}: {e.problem}",
                          "pass --from a release whose build folder is intact") from None


def read_checkpoint_meta(path: Path) -> dict:
    """The start checkpoint's backbone, classes and weights; ConfigError (exit 2) when it is not one."""
    from edgepipe.pipeline.torch_model import read_checkpoint

    if not path.is_file():
        raise ConfigError(f"finetune.init_checkpoint {path} does not exist",
                          "point it at a previous release's finetune/model.pt (or use `edgepipe update --from`)")
    try:
        return read_checkpoint(path)
    except EdgepipeError as e:
        raise ConfigError(f"finetune.init_checkpoint: {e.problem}",
                          "point it at a previous release's finetune/model.pt (or use `edgepipe update --from`)") from None


def check_init_checkpoint(cfg: BuildConfig) -> None:
    """Before any stage runs: a start checkpoint must be this build's model with other weights, the
    same backbone and the same classes; a new class or backbone is a new build, not an update. An
    update that starts from pretrained weights is checked against the previous release's model all
    the same: the two releases are compared on the same images and labels."""
    path = cfg.finetune.init_checkpoint
    if path is None and cfg.update is not None:
        path = previous_checkpoint(cfg.update.previous)
    if path is None:
        return
    from edgepipe.pipeline.data import catalog

    meta = read_checkpoint_meta(path)
    what = f"the previous release ({cfg.update.previous})" if cfg.update is not None else f"the checkpoint {path}"
    if meta["backbone"] != cfg.model.backbone:
        raise ConfigError(f"{what} is a {meta['backbone']}, this config builds a {cfg.model.backbone}: an update keeps "
                          "the backbone", f"set model.backbone: {meta['backbone']}, or run `edgepipe build` for a new "
                          "release from ImageNet weights")
    from edgepipe.pipeline.backbones import preprocess_spec

    theirs, mine = meta.get("preprocess") or {}, preprocess_spec(cfg.model.backbone, cfg.model.image_size).to_dict()
    if theirs.get("image_size") != mine["image_size"]:
        raise ConfigError(f"{what} takes {theirs.get('image_size')} px images, this config {mine['image_size']} px: "
                          "an update keeps the input size (the two releases are compared on the same images)",
                          f"set model.image_size: {theirs.get('image_size')}, or run `edgepipe build` for a new release")
    classes = list(catalog(cfg.dataset).classes)
    if list(meta["classes"]) != classes:
        raise ConfigError(f"{what} was trained on classes {', '.join(meta['classes'])}, this dataset has "
                          f"{', '.join(classes)}: an update keeps the label set",
                          "use the previous release's dataset and labels (field images go in --data), or run "
                          "`edgepipe build` for a new release with the new label set")


def load_init_checkpoint(model, path: Path):
    """Put the start checkpoint's weights (head included) into `model`; returns its LoadedWeights."""
    from edgepipe.core.files import sha256_file
    from edgepipe.pipeline.backbones import LoadedWeights

    model.load_state_dict(read_checkpoint_meta(path)["state_dict"])
    return LoadedWeights(str(path), sha256_file(path), "previous release")
