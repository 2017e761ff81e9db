"""The explain stage (pipeline/explain.py): which test images the gallery shows, in which order,
with which heat maps, and the record it writes. Verify's results are built by hand here, so the
selection is known image by image; the float model is a real checkpoint (lite0 at 32 px)."""

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgepipe.pipeline.gradcam
from edgepipe.core.errors import MissingArtifactError
from edgepipe.core.files import write_json
from edgepipe.core.metrics import machine_info
from edgepipe.pipeline.backbones import create_model, preprocess_spec
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.data import LabelledFile, PreparedData, Split
from edgepipe.pipeline.explain import select
from edgepipe.pipeline.manifest import Manifest
from edgepipe.pipeline.records import Gallery, checked, read_gallery
from edgepipe.pipeline.stages import REGISTRY, StageRun
from edgepipe.pipeline.torch_model import save_checkpoint
from tests.conftest import _images

CLASSES = ["left", "right"]
TEST = np.arange(4, 12)  # images 0-3 train / val, 4-11 the test split
LABELS = [0, 1, 0, 1, 0, 1, 0, 1]  # per test image
FLOAT = [0, 1, 1, 1, 0, 0, 0, 1]  # the float model: wrong on test images 2 and 5
FLOAT_CONF = [0.8, 0.7, 0.6, 0.9, 0.7, 0.99, 0.95, 0.85]
ORT_INT8 = [0, 1, 1, 0, 1, 0, 1, 1]  # disagrees with the float model on 3, 4, 6
OV_INT8 = [0, 1, 0, 1, 1, 0, 0, 1]  # on 2 and 4
# 4: two int8 rows disagree; then one each, the float model's confidence highest first (6, 3, 2);
# then the float errors not shown yet (5). 2 is both kinds.
EXPECTED = [(4, "int8 disagrees"), (6, "int8 disagrees"), (3, "int8 disagrees"),
            (2, "int8 disagrees, float error"), (5, "float error")]


def row(name, precision, predictions, status="ok"):
    conf = FLOAT_CONF if name == "torch-fp32" else [0.6] * len(predictions)
    return {"name": name, "target": name.split("-")[0], "precision": precision, "status": status,
            "reason": None if status == "ok" else "boom", "proxy": None, "details": {}, "size_bytes": 1,
            "predictions": predictions, "confidence": conf}


def results(data: PreparedData) -> dict:
    rows = [row("torch-fp32", "fp32", FLOAT), row("onnxruntime-fp32", "fp32", FLOAT),
            row("onnxruntime-int8", "int8", ORT_INT8),
            row("openvino-fp16", "fp16", [1 - p for p in FLOAT]),  # disagrees everywhere, but is not int8
            row("openvino-int8", "int8", OV_INT8),
            row("tensorrt-int8", "int8", [1 - p for p in FLOAT], status="failed")]  # did not run: not counted
    return {"schema": "edgepipe-verify/1", "test_images": len(TEST), "classes": CLASSES, "reference": "torch-fp32",
            "machine": machine_info(1), "method": {"warmup": 1, "runs": 1, "batch_latency": 1, "throughput_batch": 1,
                                                   "timing": "wall clock around runner.infer"},
            "rows": rows, "test_set": data.images_of("test")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, _ = create_model("tf_efficientnet_lite0", 2, pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_checkpoint(path, model, "tf_efficientnet_lite0", CLASSES, preprocess_spec("tf_efficientnet_lite0", 32))


@pytest.fixture
def build(tmp_path, checkpoint):
    """(cfg for a gallery size, PreparedData, Manifest with the finetune and verify stages recorded)."""
    images, _ = _images(12, seed=3)
    labels = np.array([0, 1, 0, 1] + LABELS)
    root = tmp_path / "data"
    files = [LabelledFile(root / CLASSES[y] / f"{i}.png", int(y)) for i, y in enumerate(labels)]
    data = PreparedData(tuple(CLASSES), files, images, labels, Split(np.array([0, 1]), np.array([2, 3]), TEST),
                        preprocess_spec("tf_efficientnet_lite0", 32), "0" * 64, "1" * 64,
                        file_sha256=[f"{i:064x}" for i in range(12)], root=root)

    def make(gallery=24, verify=None):
        cfg = BuildConfig(name="x", output_dir=tmp_path / "out", model={"image_size": 32}, report={"gallery": gallery})
        manifest = Manifest.open(cfg)
        ckpt = cfg.output_dir / "finetune" / "model.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_bytes(checkpoint.read_bytes())
        manifest.record_stage("finetune", {"checkpoint": ckpt}, {})
        path = write_json(cfg.output_dir / "verify" / "results.json", verify or results(data))
        manifest.record_stage("verify", {"results": path}, {})
        return cfg, manifest

    return make, data


def run(cfg, manifest, data) -> dict:
    assert REGISTRY["explain"].run(StageRun(cfg, manifest, lambda: data)) == 0
    return json.loads((cfg.output_dir / "explain" / "gallery.json").read_text())


def test_the_gallery_shows_int8_disagreements_then_float_errors(build, monkeypatch):
    make, data = build
    cfg, manifest = make()
    asked = []
    real = edgepipe.pipeline.gradcam.grad_cam
    monkeypatch.setattr(edgepipe.pipeline.gradcam, "grad_cam", lambda m, x, classes, **kw: (
        asked.append((x.copy(), list(classes))), real(m, x, classes, **kw))[1])
    g = run(cfg, manifest, data)
    assert [(e["index"], e["kind"]) for e in g["entries"]] == EXPECTED
    assert g["found"] == {"int8 disagrees": 4, "float error": 2} and g["shown"] == g["found"]
    assert g["reason"] is None and g["layer"] == "blocks.5.0.bn1" and g["limit"] == 24
    # the heat maps: the float model's, on those test images, for the class the float model answered
    (x, classes), = asked
    assert classes == [FLOAT[i] for i, _ in EXPECTED]
    assert np.array_equal(x, data.spec.normalize(data.images[TEST[[i for i, _ in EXPECTED]]]))
    first = g["entries"][3]  # test image 2: wrong, and openvino-int8 flipped it back to the truth
    assert first["id"] == "left/6.png" and first["label"] == "left"
    assert first["float"] == {"name": "torch-fp32", "precision": "fp32", "class": "right", "confidence": 0.6}
    assert [(a["name"], a["class"]) for a in first["artifacts"]] == [
        ("onnxruntime-fp32", "right"), ("onnxruntime-int8", "right"), ("openvino-fp16", "left"),
        ("openvino-int8", "left")]  # every row that ran, failed ones left out
    outputs = manifest.data["stages"]["explain"]["outputs"]
    assert set(outputs) == {"gallery"} | {f"png_{k}" for k in range(5)}
    for k, e in enumerate(g["entries"]):
        assert e["png"] == f"explain/{k}.png" and outputs[f"png_{k}"]["path"] == e["png"]
        png = Image.open(io.BytesIO((cfg.output_dir / e["png"]).read_bytes()))
        assert png.format == "PNG" and png.size == (64, 32)  # image | overlay, at the model's 32 px
    assert read_gallery(manifest) == g  # hash-checked and valid


def test_the_gallery_size_limits_what_is_shown_not_what_is_found(build):
    make, data = build
    cfg, manifest = make()
    run(cfg, manifest, data)
    cfg, manifest = make(gallery=3)
    g = run(cfg, manifest, data)
    assert [(e["index"], e["kind"]) for e in g["entries"]] == EXPECTED[:3]
    assert g["found"] == {"int8 disagrees": 4, "float error": 2}
    assert g["shown"] == {"int8 disagrees": 3, "float error": 0} and "first 3 of 5" in g["reason"]
    assert sorted(p.name for p in (cfg.output_dir / "explain").glob("*.png")) == ["0.png", "1.png", "2.png"]


def test_gallery_0_selects_nothing_and_runs_no_grad_cam(build, monkeypatch):
    make, data = build
    cfg, manifest = make(gallery=0)
    monkeypatch.setattr(edgepipe.pipeline.gradcam, "grad_cam", lambda *a, **k: pytest.fail("no Grad-CAM"))
    g = run(cfg, manifest, data)
    assert g["entries"] == [] and g["shown"] == {"int8 disagrees": 0, "float error": 0}
    assert g["found"] == {"int8 disagrees": 4, "float error": 2} and "report.gallery is 0" in g["reason"]
    assert g["method"] is None and g["layer"] is None
    assert set(manifest.data["stages"]["explain"]["outputs"]) == {"gallery"}
    assert not list((cfg.output_dir / "explain").glob("*.png"))


def test_an_older_build_without_per_image_predictions_gets_an_empty_gallery_with_the_reason(build):
    make, data = build
    old = results(data)
    del old["test_set"]
    for r in old["rows"]:
        del r["predictions"], r["confidence"]
    cfg, manifest = make(verify=old)
    g = run(cfg, manifest, data)
    assert g["entries"] == [] and g["found"] == {} and "older than per-image predictions" in g["reason"]


def test_without_int8_rows_the_float_errors_are_still_shown():
    r = {"reference": "torch-fp32", "classes": CLASSES, "rows": [row("torch-fp32", "fp32", FLOAT)],
         "test_set": [{"id": f"{i}.png", "sha256": "", "label": CLASSES[y]} for i, y in enumerate(LABELS)]}
    chosen, found, why = select(r, 24)
    assert chosen == [(5, "float error"), (2, "float error")]  # confidently wrong first
    assert found == {"int8 disagrees": 0, "float error": 2} and "no int8 artifact ran" in why


def test_verify_results_of_another_test_split_are_refused(build):
    make, data = build
    other = results(data)
    other["test_set"][0]["sha256"] = "f" * 64  # the image changed since verify measured it
    cfg, manifest = make(verify=other)
    with pytest.raises(MissingArtifactError, match="another test split"):
        run(cfg, manifest, data)


def test_a_bad_gallery_record_is_refused_with_the_command_that_rewrites_it(build):
    make, data = build
    cfg, manifest = make()
    good = run(cfg, manifest, data)
    assert checked(Gallery, good, "g") == good
    bad = copy.deepcopy(good)
    bad["entries"][0]["float"]["confidence"] = 1.5
    with pytest.raises(MissingArtifactError, match=r"entries\.0\.float\.confidence") as e:
        checked(Gallery, bad, "explain/gallery.json")
    assert e.value.fix == "rerun `edgepipe explain` (or `edgepipe build`) to rewrite it"
    with pytest.raises(MissingArtifactError, match="has schema 'edgepipe-explain/2'"):
        checked(Gallery, {**good, "schema": "edgepipe-explain/2"}, "explain/gallery.json")
