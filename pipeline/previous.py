"""Previous stage (`edgepipe update` only): the previous release's models on this build's field test images.

The previous release's report holds its predictions on its own test split, the dataset's. The
field test images are new, so its float model and every artifact it shipped are run on them here
(the files the previous manifest recorded, checked by hash), and the report's baseline gates can
compare the two releases on both test sets. Without an `update` section it records nothing.

It also re-times each of them here, with the verify stage's settings: the previous release's own
latency was measured on another day under another load (CPU timings move by a third minute to
minute), so the baseline latency gate compares this build with the previous release timed in this
same run, minutes apart on the same machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgepipe.core.console import console, progress
from edgepipe.core.errors import DataError, MissingArtifactError
from edgepipe.core.files import write_json
from edgepipe.core.metrics import machine_info
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.manifest import Manifest

FORMAT = "edgepipe-previous-on-field/1"


def field_test(data: PreparedData) -> np.ndarray:
    """Indices of the labelled field images in the test split."""
    return np.array([i for i in data.split.test if data.domain(i) == "field"], dtype=np.int64)


def run_previous(cfg: BuildConfig, data: PreparedData, manifest: Manifest) -> Path | None:
    from edgepipe.pipeline.manifest import float_checkpoint
    from edgepipe.pipeline.compare import load_report
    from edgepipe.pipeline.quantize import recorded_artifacts
    from edgepipe.pipeline.torch_model import TorchRunner, load_checkpoint
    from edgepipe.pipeline.update import previous_manifest
    from edgepipe.pipeline.verify import REFERENCE, measure, top1_confidence
    from edgepipe.targets import get_target

    if cfg.update is None:
        return None
    t0 = time.perf_counter()
    idx = field_test(data)
    if len(idx) == 0:
        n = 0 if data.field_start is None else len(data.files) - data.field_start
        raise DataError(f"none of the {n} labelled field image(s) went to the test split: the update cannot be "
                        "measured on the new data", "add labelled field images (a few per class at least), or raise "
                        "dataset.split.test")
    prev = previous_manifest(cfg.update.previous)
    report = load_report(cfg.update.previous, "previous release").report
    status = {r["name"]: r for r in report["rows"]}
    rgb8, images = data.images[idx], [im for im in data.images_of("test") if im["domain"] == "field"]
    try:
        model, meta = load_checkpoint(float_checkpoint(prev))
        artifacts = recorded_artifacts(prev)
    except MissingArtifactError as e:
        raise MissingArtifactError(f"the previous release {cfg.update.previous}: {e.problem}",
                                   "pass --from a release whose build folder is intact") from None
    classes = list(meta["classes"])
    runners = [(REFERENCE, lambda: TorchRunner(model, cfg.verify.threads))]
    for a in artifacts:
        if a.status == "built" and status.get(a.name, {}).get("status") == "ok":
            runners.append((a.name, lambda a=a: get_target(a.target).load(a, cfg.verify.threads)))
    rows = []
    with progress() as bar:
        task = bar.add_task("previous release on field test", total=len(runners), status="")
        for name, make in runners:
            bar.update(task, status=name)
            try:
                measured = measure(make(), rgb8, data.spec, cfg.verify)  # as verify times this build
            except Exception as e:  # e.g. a TensorRT engine on a machine without a GPU: a result, not a crash
                rows.append({"name": name, "status": "failed", "reason": f"could not run here: {type(e).__name__}: "
                                                                         f"{e}".splitlines()[0]})
            else:
                rows.append({"name": name, "status": "ok", "reason": None, "predictions": measured["logits"].argmax(1).tolist(),
                             "confidence": top1_confidence(measured["logits"]), "latency_ms": measured["latency_ms"]})
            bar.advance(task)
    labels = np.array([classes.index(im["label"]) for im in images])
    accuracy = {r["name"]: float((np.asarray(r["predictions"]) == labels).mean()) for r in rows if r["status"] == "ok"}
    out = write_json(cfg.output_dir / "previous" / "field_predictions.json", {
        "format": FORMAT, "previous": str(cfg.update.previous), "name": report["name"], "classes": classes,
        "machine": machine_info(cfg.verify.threads),
        "test_set": images, "rows": rows})
    manifest.record_stage("previous", {"field_predictions": out}, accuracy, wall_s=round(time.perf_counter() - t0, 1))
    console.print(f"previous release {report['name']} on {len(idx)} field test image(s): "
                  + ", ".join(f"{k} {v:.2%}" for k, v in accuracy.items()))
    return out
