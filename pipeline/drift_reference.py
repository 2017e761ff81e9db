"""Reference stage: the drift reference of each artifact (reference/<artifact>.json, which the bundle
stage ships as the bundle's reference.json; format in runtime/reference.py): the val and test images
as the build saw them, in the numbers a field unit's telemetry records per prediction, so `edgepipe
monitor` can tell when the field stops looking like them. A build adapted to field images (an
`adapt` section) adds them as the unlabelled "field" split, the same selection AdaBN read: that is
the field its bundles were made for, and what their monitor compares with (adapted part of the way,
adapt.strength < 1, they serve the val + test images' domain too, and the monitor takes either). A
stage of its own so that a new gate or bundle setting rewrites the bundles without decoding the
dataset or running a model again.

Image statistics (core/image_stats.py) come from the dataset's already-resized images, once per
build. Confidence, margin and the predicted class come from running the bundle's own artifact on
those images, through its runner as verify ran it ("measured"). An artifact that could not run here
(TensorRT without TensorRT) uses the stand-in its build verified instead ("proxy": the Q/DQ graph on
ONNX Runtime), or, without one, the float ONNX model ("float"; run once: an artifact that is the
exported graph itself on ONNX Runtime has its answers already); reference.json says which.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgepipe.core.console import console
from edgepipe.core.errors import DataError
from edgepipe.core.files import atomic_output, sha256_file
from edgepipe.core.image_stats import image_stats
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.manifest import Manifest
from edgepipe.pipeline.quantize import recorded_artifacts
from edgepipe.runtime.predictor import softmax
from edgepipe.runtime.reference import FIELD, SPLITS, make_reference
from edgepipe.targets import get_target
from edgepipe.targets.base import Artifact, Runner

FLOAT_ROW = "onnx-fp32"


class DriftReferences:
    """reference.json for each bundle of a build; runs each model on the val + test (and field) images once."""

    def __init__(self, data: PreparedData, onnx: Path, artifacts: list[Artifact], threads: int, batch: int,
                 field: np.ndarray | None = None, field_alone: bool = True):
        t0 = time.perf_counter()
        self.data, self.onnx, self.artifacts, self.threads, self.batch = data, onnx, artifacts, threads, batch
        self.field_alone = field_alone  # with field images: does the bundle serve them alone (full AdaBN)?
        # name -> (rgb8, labels); the field images (an adapted build's) have none
        self.images: dict[str, tuple[np.ndarray, np.ndarray | None]] = {name: data.subset(name) for name in SPLITS}
        if field is not None:
            self.images[FIELD] = (field, None)
        self.stats = {name: image_stats(rgb8) for name, (rgb8, _) in self.images.items()}
        self._probabilities: dict[str, dict[str, np.ndarray]] = {}  # row -> split -> N x classes
        self.seconds = time.perf_counter() - t0  # spent on references, for the stage record

    def _source(self, a: Artifact) -> tuple[Artifact | None, dict]:
        """(what runs, reference.json's source) for the bundle of artifact a."""
        if a.status == "built":
            return a, {"how": "measured", "row": a.name}
        proxy = next((p for p in self.artifacts if p.proxy and p.status == "built"
                      and (p.target, p.precision) == (a.target, a.precision)), None)
        if proxy is not None:
            return proxy, {"how": "proxy", "row": proxy.name, "note": f"{a.name} cannot run here ({a.reason}): "
                           f"the confidences are its stand-in's, {proxy.proxy}"}
        same = self._float_artifact()
        return same, {"how": "float", "row": same.name if same else FLOAT_ROW,
                      "note": f"{a.name} cannot run here ({a.reason}): the confidences are the float ONNX model's "
                              "(its own may differ a little)"}

    def _float_artifact(self) -> Artifact | None:
        """A built artifact that runs the exported graph itself on ONNX Runtime (the same file): its
        answers are the float model's, already computed for its own bundle."""
        from edgepipe.targets.onnxruntime.runner import OrtRunner

        digest = sha256_file(self.onnx)
        return next((p for p in self.artifacts if p.status == "built" and not p.proxy and p.path.is_file()
                     and sha256_file(p.path) == digest and isinstance(self._runner(p), OrtRunner)), None)

    def _runner(self, a: Artifact | None) -> Runner:
        if a is not None:
            return get_target(a.target).load(a, self.threads)  # not activated: nothing loads yet
        from edgepipe.targets.onnxruntime.runner import (
            OrtRunner,  # the exported graph, as export's parity check runs it
        )

        return OrtRunner(self.onnx, self.threads, name=FLOAT_ROW)

    def _run(self, row: str, a: Artifact | None) -> dict[str, np.ndarray]:
        if row not in self._probabilities:
            spec, out = self.data.spec, {}
            with self._runner(a) as runner:
                step = min(self.batch, runner.max_batch or self.batch)
                for name, (rgb8, _) in self.images.items():
                    logits = [runner.infer(spec.normalize(rgb8[i:i + step])) for i in range(0, len(rgb8), step)]
                    out[name] = softmax(np.concatenate(logits))
            self._probabilities[row] = out
        return self._probabilities[row]

    def content(self, a: Artifact) -> bytes:
        """reference.json (compact JSON) for the bundle of artifact a."""
        t0 = time.perf_counter()
        runs, source = self._source(a)
        probabilities = self._run(source["row"], runs)
        splits = {name: (self.stats[name], probabilities[name], labels) for name, (_, labels) in self.images.items()}
        ref = make_reference(list(self.data.classes), splits, self.data.labels[self.data.split.train], source,
                             self.field_alone)
        self.seconds += time.perf_counter() - t0
        return json.dumps(ref, separators=(",", ":"), allow_nan=False).encode()


def run_reference(cfg: BuildConfig, data: PreparedData, manifest: Manifest) -> dict[str, Path]:
    """reference/<artifact>.json for every artifact a bundle may be written for (not the proxies,
    whose numbers serve the bundle they stand in for; not a failed build)."""
    artifacts = recorded_artifacts(manifest)
    field = None
    if cfg.adapt is not None:
        from edgepipe.pipeline.field_images import load_field_images

        field = load_field_images(cfg.adapt, data.spec, cfg.seed, cfg.dataset.on_bad_image)[0]
        if len(field) == 0:  # the adapt stage refuses this first; a folder emptied since must not crash here
            raise DataError(f"adapt.images {cfg.adapt.images} holds no readable image now: the bundles' field "
                            "reference needs the images the model was adapted to",
                            "put the field images back, or remove the adapt section and rebuild")
    # a bundle adapted part of the way (adapt.strength < 1) serves the training domain as well: its
    # monitor must take both for its own, or it flags the images it was made to keep serving
    field_alone = cfg.adapt is None or cfg.adapt.strength == 1
    refs = DriftReferences(data, manifest.output("export", "onnx"), artifacts, cfg.verify.threads,
                           cfg.verify.throughput_batch, field, field_alone)
    outputs = {}
    for a in artifacts:
        if a.proxy or a.status == "failed":
            continue
        path = cfg.output_dir / "reference" / f"{a.name}.json"
        with atomic_output(path) as tmp:
            tmp.write_bytes(refs.content(a))
        outputs[a.name] = path
    manifest.record_stage("reference", outputs, {"artifacts": len(outputs)}, wall_s=round(refs.seconds, 1))
    also = "" if field is None else f", with the {len(field)} field images the model was adapted to"
    console.print(f"drift references: {len(outputs)} artifact(s){also}, {refs.seconds:.0f} s")
    return outputs
