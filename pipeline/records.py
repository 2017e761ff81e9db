"""The build's records as pydantic models: verify/results.json, explain/gallery.json and report.json,
each with a schema version. bundle.json's model lives with the device code that reads it (runtime/bundle.py).

The stages validate a record before writing it and again when a later stage reads it back, so a
hand-edited or foreign file is refused with the command that rewrites it; a record of another
schema version is refused the same way. `edgepipe schema` prints their JSON schemas (docs/schemas/).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgepipe.core.errors import MissingArtifactError

VERIFY_SCHEMA = "edgepipe-verify/1"
REPORT_SCHEMA = "edgepipe-report/1"
CV_SCHEMA = "edgepipe-cv/1"
EXPLAIN_SCHEMA = "edgepipe-explain/1"

Share = Annotated[float, Field(ge=0, le=1)]
Delta = Annotated[float, Field(ge=-1, le=1)]


class _Record(BaseModel):
    # strict: "yes" is not true and "1" is not 1; these files are written by edgepipe, not by hand
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True, strict=True)


class Machine(_Record):
    cpu: str
    logical_cpus: int | None
    threads: int
    platform: str


class Method(_Record):
    warmup: int
    runs: int
    batch_latency: int
    throughput_batch: int
    timing: str


class Latency(_Record):
    p50: float
    p95: float
    p99: float
    mean: float
    runs: int


class Throughput(_Record):
    batch: int
    images_per_s: float


class VsParent(_Record):
    parent: str
    accuracy_delta: Delta
    agreement: Share
    max_abs_logit_diff: float


class Row(_Record):
    """One measured model: the float reference (torch-fp32) or an artifact. Measurements are null
    for a row that did not run (skipped / failed, with the reason)."""

    name: str
    target: str
    precision: str
    status: Literal["ok", "skipped", "failed"]
    reason: str | None
    proxy: str | None  # label when the row ran a stand-in for the real backend
    details: dict
    size_bytes: int
    accuracy: Share | None = None
    macro_f1: Share | None = None
    per_class_recall: dict[str, Share | None] | None = None
    per_class_precision: dict[str, Share | None] | None = None  # None for a build older than the field
    per_class_f1: dict[str, Share | None] | None = None
    confusion: list[list[int]] | None = None  # [true class][predicted class]
    accuracy_delta: Delta | None = None  # vs the reference row
    agreement: Share | None = None  # top-1 agreement with the reference row
    vs_parent: VsParent | None = None
    latency_ms: Latency | None = None  # batch 1
    throughput: Throughput | None = None
    runtime: str | None = None  # what the backend chose at activation (e.g. compute precision)
    # per test image, in the order of the results' test_set: the top-1 class index and its softmax
    # probability; what the gallery, `edgepipe diff` and the baseline gates compare image by image
    predictions: list[Annotated[int, Field(ge=0)]] | None = None
    confidence: list[Share] | None = None


class SplitImage(_Record):
    """One image of the test split: where it is, what its bytes hash to, its true class."""

    id: str  # path relative to the dataset root ("field/<path>" for labelled field images)
    sha256: str
    label: str
    # "field": a labelled field image (dataset.field, `edgepipe update --data`), the rest the dataset's
    domain: Literal["dataset", "field"] = "dataset"


class VerifyResults(_Record):
    """verify/results.json"""

    schema_: Literal["edgepipe-verify/1"] = Field(alias="schema")
    test_images: int
    classes: list[str]
    reference: str
    machine: Machine
    method: Method
    rows: list[Row]
    test_set: list[SplitImage] | None = None  # None for a build older than the field


class Gate(_Record):
    artifact: str
    gate: Literal["max_accuracy_drop", "min_agreement", "max_latency_ms", "build",
                  "baseline_accuracy_drop", "baseline_latency_increase", "baseline_field_gain"]
    status: Literal["passed", "failed", "skipped"]
    limit: float | None
    value: float | None
    reason: str | None


class Weights(_Record):
    """The backbone the float model was fine-tuned from and where its ImageNet weights came from."""

    backbone: str
    origin: Literal["package", "file", "torch-hub cache", "huggingface cache", "huggingface download", "none",
                    "previous release"]
    source: str  # the file read, or "none" for a random initialisation
    sha256: str | None


class Baseline(_Record):
    report: str  # the baseline report.json read
    sha256: str
    name: str
    created: str
    compared_on: str  # "the same test split" or "N images common to both test splits"
    field_compared_on: str | None = None  # an update: the field test images both releases were run on
    latency_from: str | None = None  # an update: the previous release re-timed in this run, not its own report


class DomainAccuracy(_Record):
    """Each row's accuracy on one part of the test split: the dataset's images or the field's."""

    domain: Literal["dataset", "field"]
    images: int
    accuracy: dict[str, Share]  # per row that ran


class AdaptRecord(_Record):
    """What the adapt stage (AdaBN) did: on how many unlabelled field images, from where."""

    method: str
    images: int
    folder: str
    layers: int
    mean_shift: float  # how far the statistics moved, in the trained standard deviations
    strength: float = 1.0  # share of the way toward the field's statistics (reports before it: 1)


class Report(_Record):
    """report.json: the verify rows, the gates evaluated on them and the build's verdict."""

    schema_: Literal["edgepipe-report/1"] = Field(alias="schema")
    name: str
    created: str
    config_sha256: str
    machine: Machine
    test_images: int
    reference: str
    passed: bool
    exit_code: Literal[0, 3]
    rows: list[Row]
    gates: list[Gate]
    augmentation: str | None = None  # what the fine-tune's augmentation did, in words
    weights: Weights | None = None  # None for a build older than this field
    test_set: list[SplitImage] | None = None  # the verify results' (None for a build older than the field)
    baseline: Baseline | None = None  # the previous release the baseline gates compared with
    domains: list[DomainAccuracy] | None = None  # when the test split holds labelled field images
    adapt: AdaptRecord | None = None  # when AdaBN ran before export



class Fold(_Record):
    fold: int
    train_images: int
    val_images: int
    val_accuracy: Share  # the best epoch's, the checkpoint kept
    test_accuracy: Share  # the one test split every fold shares (never trained or selected on)
    best_epoch: int
    epochs_run: int
    wall_s: float
    output_dir: str


class Spread(_Record):
    mean: Share
    std: float  # sample standard deviation over the folds (ddof 1)
    min: Share
    max: Share


class CvReport(_Record):
    """cv/cv.json: k-fold cross-validation of the fine-tune over train + val (`edgepipe cv`)."""

    schema_: Literal["edgepipe-cv/1"] = Field(alias="schema")
    name: str
    created: str
    config_sha256: str
    backbone: str
    image_size: int
    seed: int
    folds: int
    test_images: int
    per_fold: list[Fold]
    val_accuracy: Spread
    test_accuracy: Spread
    wall_s: float


GalleryKind = Literal["int8 disagrees", "float error"]


class Prediction(_Record):
    """One model's answer on one test image: the top-1 class and its softmax probability."""

    name: str  # the verify row
    precision: str
    class_: str = Field(alias="class")
    confidence: Share


class GalleryEntry(_Record):
    index: int = Field(ge=0)  # position in the verify results' test_set
    id: str  # path relative to the dataset root
    label: str  # the true class
    kind: Literal["int8 disagrees", "float error", "int8 disagrees, float error"]
    float_: Prediction = Field(alias="float")  # the reference row; the heat map is for its class
    artifacts: list[Prediction]  # every other row with per-image predictions, in verify's order
    png: str  # the image | the image with its heat map, relative to the output dir


class Gallery(_Record):
    """explain/gallery.json: test images where an int8 artifact disagrees with the float model, then
    the float model's own errors, each with the float model's Grad-CAM heat map."""

    schema_: Literal["edgepipe-explain/1"] = Field(alias="schema")
    method: str | None  # in words; None when nothing was explained
    layer: str | None  # the float model's module the heat maps are taken at
    reference: str  # the verify row the others are compared with (the float model)
    limit: int = Field(ge=0)  # report.gallery
    found: dict[GalleryKind, int]  # every such test image, the gallery may show fewer
    shown: dict[GalleryKind, int]  # an image of both kinds counts in both
    reason: str | None  # why the gallery is empty or short, None when it shows all it found
    entries: list[GalleryEntry]


_WRITTEN_BY = {VerifyResults: ("verify", VERIFY_SCHEMA), Report: ("report", REPORT_SCHEMA),
               CvReport: ("cv", CV_SCHEMA), Gallery: ("explain", EXPLAIN_SCHEMA)}


def checked(model: type[_Record], data: dict, where: str) -> dict:
    """data, validated as `model`; MissingArtifactError naming the problem and the command that
    rewrites it. A record of another schema version is refused before its fields are read."""
    stage, schema = _WRITTEN_BY[model]
    fix = {"cv": "rerun `edgepipe cv` to rewrite it"}.get(  # not a build stage
        stage, f"rerun `edgepipe {stage}` (or `edgepipe build`) to rewrite it")
    found = data.get("schema") if isinstance(data, dict) else None
    if found != schema:
        raise MissingArtifactError(f"{where} has schema {found!r}; this edgepipe reads {schema!r}", fix)
    try:
        model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise MissingArtifactError(f"{where} is not a valid {schema} record ({at}: {first['msg']})", fix) from None
    return data


def read_results(manifest) -> dict:
    return checked(VerifyResults, manifest.read_json("verify", "results"), "verify/results.json")


def read_report(manifest) -> dict:
    return checked(Report, manifest.read_json("report", "report_json"), "report.json")


def read_gallery(manifest) -> dict:
    return checked(Gallery, manifest.read_json("explain", "gallery"), "explain/gallery.json")


def json_schemas() -> dict[str, dict]:
    """name -> JSON schema of each record edgepipe writes (bundle.json's included)."""
    from edgepipe.runtime.bundle import BundleMeta

    return {"verify-results": VerifyResults.model_json_schema(by_alias=True),
            "report": Report.model_json_schema(by_alias=True),
            "bundle": BundleMeta.model_json_schema(by_alias=True),
            "cv": CvReport.model_json_schema(by_alias=True),
            "explain-gallery": Gallery.model_json_schema(by_alias=True)}
