"""Typed build configuration: one YAML file per build, validated before any work starts.

Relative paths in the file are resolved against the directory of the config file, so a
config and its data can move together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BeforeValidator, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from edgepipe.core.errors import ConfigError
from edgepipe.targets.section import Section, TargetSection

_Section = Section  # strict keys, no NaN / Inf: shared with the backends' sections


class FoldConfig(_Section):
    """One fold of k-fold cross-validation over train + val (the test split stays as it is)."""

    index: int = Field(ge=1, description="this fold, 1..of: its images are the validation split")
    of: int = Field(ge=2, le=20, description="the number of folds")

    @model_validator(mode="after")
    def _index_in_range(self):
        if self.index > self.of:
            raise ValueError(f"fold index {self.index} is above the number of folds {self.of}")
        return self


class SplitConfig(_Section):
    val: float = Field(0.15, gt=0, lt=1, description="fraction of each class held out for validation")
    test: float = Field(0.25, gt=0, lt=1, description="fraction of each class held out for the final test")
    fold: FoldConfig | None = Field(None, description="set by `edgepipe cv`: validate on this fold of train + val")

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.val + self.test > 0.8:
            raise ValueError("split.val + split.test must leave at least 20 % of the data for training")
        return self


class FieldDataConfig(_Section):
    """Labelled images from the field, added to the dataset (`edgepipe update --data`). They are
    split into train / val / test on their own, with the dataset's fractions and seed, so the
    dataset's own split (and the previous release's test set) stays exactly what it was."""

    source: Literal["imagefolder", "csv"] = "imagefolder"
    root: Path | None = Field(None, description="imagefolder: root/<class>/*.png; csv: base of relative paths")
    csv: Path | None = Field(None, description="csv source: a file with `path` and `label` columns")

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "imagefolder" and self.root is None:
            raise ValueError("dataset.field source 'imagefolder' needs root (a folder with one sub-folder per class)")
        if self.source == "csv" and self.csv is None:
            raise ValueError("dataset.field source 'csv' needs csv (a file with path,label columns)")
        return self


class DatasetConfig(_Section):
    source: Literal["elpv", "imagefolder", "csv"] = "elpv"
    root: Path | None = Field(None, description="imagefolder: root/<class>/*.png; csv: base of relative paths")
    csv: Path | None = Field(None, description="csv source: a file with `path` and `label` columns")
    defect_threshold: float = Field(0.5, gt=0, le=1, description="elpv: defect probability that counts as defective")
    elpv_cells: Literal["all", "mono", "poly"] = Field(
        "all", description="elpv: every cell, or only mono- or polycrystalline ones (a domain shift to test on)")
    limit: int | None = Field(None, ge=8, description="use a stratified subset of this many images (quick runs)")
    split: SplitConfig = SplitConfig()
    on_bad_image: Literal["fail", "skip"] = "fail"
    on_duplicate: Literal["error", "skip"] = Field(
        "error", description="byte-identical images under two labels: stop, or drop every copy (with a warning)")
    mixed_sizes: Literal["error", "resize"] = Field(
        "error", description="images of differing sizes: stop, or resize each to the model input")
    allow_outside_root: bool = Field(
        False, description="accept csv paths and links that resolve outside the dataset root (trusted data only)")
    field: FieldDataConfig | None = Field(
        None, description="labelled field images added to the dataset, split on their own (edgepipe update --data)")

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "imagefolder" and self.root is None:
            raise ValueError("dataset.source 'imagefolder' needs dataset.root (a folder with one sub-folder per class)")
        if self.source == "csv" and self.csv is None:
            raise ValueError("dataset.source 'csv' needs dataset.csv (a file with path,label columns)")
        if self.source == "elpv" and (self.root is not None or self.csv is not None):
            raise ValueError("dataset.source 'elpv' is built in: remove dataset.root / dataset.csv")
        if self.source != "elpv" and self.elpv_cells != "all":
            raise ValueError("dataset.elpv_cells selects cells of the built-in elpv dataset only: remove it")
        return self


class ModelConfig(_Section):
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: Path | None = Field(None, description="local ImageNet weights file (state dict)")
    image_size: int = Field(224, ge=32, le=1024)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from edgepipe.pipeline.backbones import BACKBONES

        if name not in BACKBONES:
            raise ValueError(f"unknown backbone '{name}'; choose one of: {', '.join(sorted(BACKBONES))}")
        return name

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, size: int) -> int:
        if size % 32:
            raise ValueError(f"image_size {size} must be a multiple of 32 (the backbones downsample 32x)")
        return size


class AugmentConfig(_Section):
    """Training-time augmentation. The defaults keep every class what it is on any image task: a
    mild zoom and shift, brightness and contrast. Flips and 90° turns change orientation, which is
    the class on many tasks (digits, letters, arrows, signs, gestures): opt in per dataset."""

    flips: bool = Field(False, description="random horizontal and vertical flips: only where orientation means nothing")
    rot90: bool = Field(False, description="random 90° turns of square images: only where orientation means nothing")
    zoom: float = Field(0.1, ge=0, le=0.5, description="random zoom-in up to this share (crop and resize)")
    shift: float = Field(0.05, ge=0, le=0.25, description="random shift up to this share of each side")
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)

    def describe(self) -> str:
        """The augmentations that run, in words (the report and the log say this)."""
        parts = [f"zoom up to {self.zoom:.0%}" if self.zoom else "", f"shift up to {self.shift:.0%}" if self.shift else "",
                 f"brightness ±{self.brightness:g}" if self.brightness else "",
                 f"contrast ±{self.contrast:g}" if self.contrast else "",
                 "flips" if self.flips else "", "90° turns" if self.rot90 else ""]
        on = ", ".join(p for p in parts if p) or "none"
        off = [name for name, flag in (("flips", self.flips), ("90° turns", self.rot90)) if not flag]
        return on + (f" ({' and '.join(off)} off: they can change a class)" if off else "")


class FinetuneConfig(_Section):
    """Transfer-learning recipe. Fields left null take the device profile's value (see finetune.py)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    warmup_epochs: int | None = Field(None, ge=0, description="head-only epochs on cached backbone features")
    epochs: int | None = Field(None, ge=0, description="full fine-tune epochs after the warm-up; with a budget, the most")
    budget_minutes: float | None = Field(
        None, gt=0, le=10080, description="wall time for the whole fine-tune stage: the full fine-tune gets the epochs "
        "that fit after the warm-up, at the epoch time measured on this machine (null: the device profile's; "
        "set `epochs` without a budget for exactly that many epochs on any machine)")
    batch_size: int = Field(32, ge=2, le=4096)
    head_lr: float = Field(1e-3, gt=0)
    backbone_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without val improvement")
    batchnorm: Literal["frozen", "train"] | None = Field(
        None, description="frozen: keep ImageNet statistics while fine-tuning; train: update them")
    class_weighted_loss: bool = True
    augment: AugmentConfig = AugmentConfig()
    init_checkpoint: Path | None = Field(
        None, description="start from this edgepipe checkpoint (a previous release's finetune/model.pt) instead of "
        "ImageNet weights: set by `edgepipe update --from PREVIOUS`")


ADAPT_MIN_IMAGES = 32  # batch-norm statistics from fewer images are noise, not the field's


class AdaptConfig(_Section):
    """Unlabelled adaptation (AdaBN): before export and quantization, re-estimate every batch-norm
    layer's statistics on images from the field, so a new camera, season or panel type is
    normalised the way the training images were. Only statistics change, never a weight."""

    images: Path = Field(description="a folder of unlabelled field images (searched recursively; labels are ignored)")
    limit: int = Field(1000, ge=ADAPT_MIN_IMAGES, description="most field images used (a seeded random subset)")
    # One set of statistics serves every input: fully adapted, the training domain loses accuracy
    # (ELPV mono -> poly, 3 seeds: poly +36.0 pt, mono -3.3 pt; strength 0.5: +8.3 / -1.2 pt; 0.25:
    # +2.5 / +0.2 pt; bench/results/adabn_strength.md). 1 suits a unit that sees only the new
    # domain; lower trades field gain for keeping the training domain. To keep both, ship release 1
    # and the adapted bundle and let `monitor --alternative` choose per window.
    strength: float = Field(1.0, gt=0, le=1, description="share of the way each batch-norm layer's statistics move "
                            "toward the field's (1: the field's alone; lower keeps more of the training domain)")


class ParityConfig(_Section):
    images: int = Field(64, ge=1, description="validation images compared between torch and ONNX")
    max_abs_diff: float = Field(1e-3, gt=0)
    min_agreement: float = Field(0.99, ge=0, le=1)


class ExportConfig(_Section):
    opset: int = Field(18, ge=17, le=23)
    dynamic_batch: bool = True
    simplify: bool = True
    parity: ParityConfig = ParityConfig()


class CalibrationConfig(_Section):
    size: int = Field(300, ge=1, description="class-balanced images drawn from the train split")
    # int8 weights: data_aware picks each weight's rounding direction from calibration inputs
    # (pipeline/weight_rounding.py); nearest leaves it to each backend's quantizer.
    weight_rounding: Literal["data_aware", "nearest"] = "data_aware"
    rounding_images: int = Field(128, ge=1, description="calibration images that weigh the rounding")


class FallbackConfig(_Section):
    """Accuracy-aware int8: keep the most sensitive layers in float until the validation split agrees."""

    enabled: bool = True
    target_agreement: float = Field(0.99, ge=0, le=1, description="top-1 agreement with float on the val split")
    max_accuracy_drop: float = Field(0.003, ge=0, le=1, description="val accuracy drop allowed")
    max_float_layers: int = Field(4, ge=0, description="most layers kept in float before giving up")


class BaselineConfig(_Section):
    """The previous release: no artifact may be worse than its same-named artifact there."""

    report: Path = Field(description="the previous release's report.json, or its build folder")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="absolute top-1 drop vs the baseline's artifact")
    # CPU latency is noisy (±30 % minute to minute) and means nothing across machines: a generous
    # default, and skipped (with the reason) when the baseline was measured on another CPU
    max_latency_increase: float | None = Field(0.5, ge=0, description="p50 latency increase vs the baseline, as a "
                                               "fraction (0.5: at most 1.5x); null turns the gate off")
    # a baseline from another dataset or seed may share a handful of test images: a comparison on
    # those says nothing, and a gate must not pass on it
    min_common: float = Field(0.9, gt=0, le=1, description="share of this build's test images the baseline's "
                              "test split must also hold")


class GateConfig(_Section):
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="absolute top-1 drop vs the float model")
    min_agreement: float = Field(0.98, ge=0, le=1, description="share of test images with the float model's top-1")
    max_latency_ms: float | None = Field(None, gt=0, description="batch-1 p50 latency limit")
    baseline: BaselineConfig | None = Field(None, description="compare every artifact with the previous release's "
                                            "(also `edgepipe build --baseline PREVIOUS`)")


def _target_section(entry):
    """A `targets:` entry validated by the section of the backend it names (targets/<name>/config.py)."""
    from edgepipe.targets import REGISTRY, backend

    if isinstance(entry, TargetSection):
        return entry
    if not isinstance(entry, dict):
        raise ValueError(f"each target is a mapping with a name, one of {', '.join(REGISTRY)}")
    name = entry.get("name")
    if name not in REGISTRY:
        raise ValueError(f"unknown target {name!r}: edgepipe builds for {', '.join(REGISTRY)}")
    return backend(name).config_class().model_validate(entry)


def _default_targets() -> list:
    from edgepipe.targets import backends

    return [b.config_class()(name=b.name) for b in backends() if b.default]


class VerifyConfig(_Section):
    threads: int = Field(2, ge=1, le=1024, description="CPU threads for every latency measurement")
    warmup: int = Field(10, ge=0, description="batch-1 runs discarded before timing")
    runs: int = Field(100, ge=5, le=100_000, description="timed batch-1 runs (p50 / p95 / p99)")
    throughput_batch: int = Field(32, ge=1, le=1024)


class ReportConfig(_Section):
    """report.html: what the reviewer sees beyond the tables."""

    gallery: int = Field(24, ge=0, le=500, description="test images shown with a Grad-CAM heat map: int8 "
                         "disagreements with the float model first, then the float model's own errors (0: none)")


class TrackingConfig(_Section):
    """Experiment tracking: the build logs its config, per-artifact metrics and reports to MLflow
    (`pip install 'edgepipe[tracking]'`)."""

    mlflow: str = Field(min_length=1, description="MLflow tracking URI: a folder (file store, offline), "
                        "sqlite:///path/mlflow.db, or http(s)://server")
    experiment: str | None = Field(None, min_length=1, description="experiment name (default: the build's name)")


class BundleConfig(_Section):
    """Deploy bundles: one self-contained folder per verified artifact, for field units."""

    enabled: bool = True
    dist_dir: Path = Field(Path("dist"), description="bundles go to <dist_dir>/<name>/<target>-<precision>/")
    archive: bool = Field(True, description="also write <name>-<target>-<precision>.tar.gz (+ .sha256), the release asset")


class UpdateConfig(_Section):
    """A release built from the previous one (`edgepipe update CONFIG --from PREVIOUS --data NEW`):
    its fine-tune starts from PREVIOUS's float model (or, start "pretrained", from the backbone's
    pretrained weights) and trains on the dataset plus the labelled field images (dataset.field);
    its baseline gates compare it with PREVIOUS on both test sets."""

    previous: Path = Field(description="the previous release's build folder (its output_dir, holding manifest.json)")
    min_field_gain: float = Field(0.0, ge=-1, le=1, description="each artifact's accuracy on the field test images "
                                  "must be at least the previous release's same artifact's plus this")
    # "pretrained": a fresh fine-tune from the backbone's pretrained weights on the same data, gated
    # the same way. ELPV mono -> poly, 3 seeds, same budget: ahead of the start from the previous
    # release by 1.8 pt on poly (-4.5 / +1.5 / -2.5 pt by seed: within the noise of 200 test cells)
    # and 1.3 pt on mono (bench/results/field_loop_update.md); one task, so the default stays.
    start: Literal["previous", "pretrained"] = Field(
        "previous", description="the fine-tune's starting weights: the previous release's model, or the backbone's "
                                "pretrained ones (a fresh fine-tune on the dataset plus the field images)")


# Settings added after builds existed, with the default that keeps the old behaviour: at that default
# they stay out of the build's identity (BuildConfig.sha256), so those builds do not rerun.
ADDED_LATER = {("adapt", "strength"): 1.0, ("update", "start"): "previous"}


class BuildConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # file names are built from it
    seed: int = Field(0, ge=0, lt=2**32, description="split, training and calibration seed")
    output_dir: Path = Path("build")
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    export: ExportConfig = ExportConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    fallback: FallbackConfig = FallbackConfig()
    # each entry is its backend's own section; SerializeAsAny: dumped (and hashed) with all of its fields
    targets: list[SerializeAsAny[Annotated[TargetSection, BeforeValidator(_target_section)]]] = Field(default_factory=_default_targets, min_length=1)
    verify: VerifyConfig = VerifyConfig()
    gates: GateConfig = GateConfig()
    report: ReportConfig = ReportConfig()
    bundle: BundleConfig = BundleConfig()
    tracking: TrackingConfig | None = None
    adapt: AdaptConfig | None = Field(None, description="AdaBN on unlabelled field images (also `--adapt DIR`)")
    update: UpdateConfig | None = Field(None, description="this release updates a previous one (edgepipe update)")

    @field_validator("targets")
    @classmethod
    def _each_target_once(cls, targets: list) -> list:
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"each target may appear once; got {names}")
        return targets

    @model_validator(mode="after")
    def _update_needs_field_data(self):
        if self.update is not None and self.dataset.field is None:
            raise ValueError("update needs the new labelled field images: set dataset.field (or pass --data NEW)")
        return self

    def sha256(self) -> str:
        """The build's identity, in report.json and the report's key. Where its runs are logged is
        not part of it: adding a tracking section must not rewrite the report or rebuild bundles."""
        dump = self.model_dump(mode="json", exclude={"tracking"})
        for (section, key), default in ADDED_LATER.items():  # at its default: builds from before keep their identity
            if dump.get(section) is not None and dump[section][key] == default:
                del dump[section][key]
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()


def _resolve_paths(cfg: BuildConfig, base: Path) -> BuildConfig:
    def rel(p: Path | None) -> Path | None:
        return None if p is None else (base / p).resolve()  # absolute too: `..` and links, so overlaps compare

    return cfg.model_copy(update={
        "output_dir": rel(cfg.output_dir),
        "dataset": cfg.dataset.model_copy(update={"root": rel(cfg.dataset.root), "csv": rel(cfg.dataset.csv),
                                                  "field": None if cfg.dataset.field is None else cfg.dataset.field.model_copy(
                                                      update={"root": rel(cfg.dataset.field.root),
                                                              "csv": rel(cfg.dataset.field.csv)})}),
        "model": cfg.model.model_copy(update={"weights": rel(cfg.model.weights)}),
        "finetune": cfg.finetune.model_copy(update={"init_checkpoint": rel(cfg.finetune.init_checkpoint)}),
        "adapt": None if cfg.adapt is None else cfg.adapt.model_copy(update={"images": rel(cfg.adapt.images)}),
        "update": None if cfg.update is None else cfg.update.model_copy(update={"previous": rel(cfg.update.previous)}),
        "bundle": cfg.bundle.model_copy(update={"dist_dir": rel(cfg.bundle.dist_dir)}),
        "gates": cfg.gates.model_copy(update={"baseline": None if cfg.gates.baseline is None else
                                              cfg.gates.baseline.model_copy(update={"report": rel(cfg.gates.baseline.report)})}),
        "tracking": None if cfg.tracking is None else
        cfg.tracking.model_copy(update={"mlflow": _resolve_uri(cfg.tracking.mlflow, base)}),
    })


def _resolve_uri(uri: str, base: Path) -> str:
    """A tracking URI with its local path, if relative, taken from the config's folder like every
    other path: a folder (file store) or sqlite:///relative.db. Server URIs are left as they are."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((base / uri.removeprefix("sqlite:///")).resolve())
    if "://" in uri or uri.startswith("file:"):
        return uri
    return str((base / uri).resolve())


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against examples/elpv.yaml)"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key repeated in one mapping is an error: PyYAML keeps the last one
    silently, so a second `gates:` block would replace the first and a strict gate would vanish."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: overriding merged keys is YAML
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it as it does
                continue
            if first is not None:
                raise ConfigError(f"{self.name}: key '{key}' appears twice in one section (lines {first} and "
                                  f"{line}); the second would silently replace the first", "merge the two into one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _check_collisions(cfg: BuildConfig, path: Path) -> None:
    """Outputs must not land among the inputs: an output_dir inside an image folder becomes a class,
    and the bundle folder <dist_dir>/<name> replaces and deletes what it holds."""
    bundles = cfg.bundle.dist_dir / cfg.name
    # folders searched for images: the labelled field images' classes, adapt's unlabelled images
    searched = [(k, f) for k, f in (("dataset.field.root", cfg.dataset.field and cfg.dataset.field.source == "imagefolder"
                                     and cfg.dataset.field.root), ("adapt.images", cfg.adapt and cfg.adapt.images)) if f]
    for name, folder in searched:
        for key, out in (("output_dir", cfg.output_dir), ("bundle.dist_dir", cfg.bundle.dist_dir)):
            if out.is_relative_to(folder):
                raise ConfigError(f"{path}: {key} {out} is inside {name} {folder}: the build's own files would be "
                                  "read as images", f"move {key} outside {folder}")
    if cfg.dataset.source == "elpv":
        return  # read-only package data
    root = cfg.dataset.root if cfg.dataset.root is not None else cfg.dataset.csv.parent
    if root.is_relative_to(bundles):  # also when equal
        raise ConfigError(f"{path}: the bundle folder {bundles} (bundle.dist_dir / name) holds the dataset root "
                          f"{root}: bundling would replace or delete images", "choose another bundle.dist_dir or name")
    if cfg.dataset.source != "imagefolder":
        return  # a csv names its images, so outputs beside them are never read
    for key, out in (("output_dir", cfg.output_dir), ("bundle.dist_dir", cfg.bundle.dist_dir)):
        if out.is_relative_to(root):  # also when equal
            raise ConfigError(f"{path}: {key} {out} is inside dataset.root {root}: the build's own files "
                              "would be read as a class of images", f"move {key} outside {root}")
    for name, folder in searched:  # field images in the dataset's folder would become a class of it
        if folder.is_relative_to(root):
            raise ConfigError(f"{path}: {name} {folder} is inside dataset.root {root}: its images would be read "
                              "as a class of the dataset too", f"move {name} outside {root}")


def revalidated(cfg: BuildConfig, where: str) -> BuildConfig:
    """cfg checked again after a command changed it (`update --name`, `--adapt`): model_copy does not
    validate, and a bad value must fail here as it would in the YAML."""
    try:
        cfg = BuildConfig.model_validate(cfg.model_dump(mode="json", by_alias=True))
    except ValidationError as e:
        raise ConfigError(f"{where}: {_describe(e)}", "correct those options") from None
    _check_collisions(cfg, Path(where))
    return cfg


def load_config(path: str | Path) -> BuildConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "pass the path of a build YAML such as examples/elpv.yaml")
    try:
        with path.open(encoding="utf-8") as f:  # a stream, so the loader's errors name the file
            raw = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8)", "pass the build YAML, e.g. examples/elpv.yaml") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}", "fix the syntax (indentation, colons, quotes)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a YAML mapping of sections", "start from examples/elpv.yaml")
    split = raw.get("dataset", {}).get("split") if isinstance(raw.get("dataset"), dict) else None
    if isinstance(split, dict) and split.get("fold") is not None:
        raise ConfigError(f"{path}: dataset.split.fold is set by `edgepipe cv` for its folds, not in a build config",
                          "remove it; run `edgepipe cv CONFIG --folds K` for cross-validation")
    try:
        cfg = BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_describe(e)}", "correct those keys; examples/elpv.yaml shows every section") from None
    cfg = _resolve_paths(cfg, path.resolve().parent)
    _check_collisions(cfg, path)
    return cfg
