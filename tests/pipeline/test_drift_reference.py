"""The bundle stage's drift reference (reference.json): what it holds, which model made its
confidences, and that the bundle's integrity check covers it."""

import json

import numpy as np
import pytest

from edgepipe.core.errors import BundleError
from edgepipe.core.image_stats import image_stats
from edgepipe.runtime.bundle import load_bundle
from edgepipe.runtime.reference import SIGNALS, load_reference
from tests.conftest import _images

BUNDLES = ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "tensorrt-fp16", "tensorrt-int8")


def _reference(tiny_build, name):
    return load_reference(load_bundle(tiny_build["dist"] / name))


def test_every_bundle_carries_a_reference_listed_and_hashed_in_bundle_json(tiny_build):
    for name in BUNDLES:
        meta = json.loads((tiny_build["dist"] / name / "bundle.json").read_text())
        assert "reference.json" in meta["files"], name
        ref = _reference(tiny_build, name)
        assert ref.labels == ["left", "right"] and set(ref.splits) == {"val", "test"}
        assert ref.splits["val"].images == 32 and ref.splits["test"].images == 32
        assert ref.domains == (("val", "test"),) and ref.images(("val", "test")) == 64
        assert set(ref.splits["val"].signals) == set(SIGNALS)
        assert ref.train_priors["left"] + ref.train_priors["right"] == pytest.approx(1)


def test_the_image_statistics_are_those_of_the_split_images(tiny_build):
    rgb8, labels = _images(64, seed=2)
    ref = _reference(tiny_build, "onnxruntime-fp32")
    stats = image_stats(rgb8[32:])
    assert ref.splits["test"].signals["mean"] == pytest.approx(stats[:, 0], abs=0.006)
    assert ref.splits["test"].signals["sharpness"] == pytest.approx(stats[:, 5], abs=0.06)
    assert ref.splits["test"].labels == {"left": int((labels[32:] == 0).sum()), "right": int((labels[32:] == 1).sum())}


def test_confidences_are_the_artifacts_own_or_its_proxys_or_the_float_models(tiny_build):
    rows = {r["name"]: r for r in json.loads((tiny_build["cfg"].output_dir / "verify" / "results.json")
                                              .read_text())["rows"]}
    expect = {"onnxruntime-fp32": ("measured", "onnxruntime-fp32"),
              "onnxruntime-int8": ("measured", "onnxruntime-int8"), "openvino-fp32": ("measured", "openvino-fp32"),
              "tensorrt-int8": ("proxy", "tensorrt-int8-proxy"),
              "tensorrt-fp16": ("float", "onnxruntime-fp32")}  # the exported graph itself, on ONNX Runtime
    for name, (how, row) in expect.items():
        ref = _reference(tiny_build, name)
        assert (ref.source.how, ref.source.row) == (how, row), name
        if how != "float":  # verify scored all 64 images: the test split is the second half
            assert ref.splits["test"].signals["confidence"] == pytest.approx(rows[row]["confidence"][32:], abs=1e-4)
            predicted = np.array(rows[row]["predictions"][32:])
            assert ref.splits["test"].predicted == {"left": int((predicted == 0).sum()),
                                                    "right": int((predicted == 1).sum())}
    fp32, float_ = _reference(tiny_build, "onnxruntime-fp32"), _reference(tiny_build, "tensorrt-fp16")
    assert float_.splits["val"].signals["confidence"] == \
        pytest.approx(fp32.splits["val"].signals["confidence"], abs=1e-5)
    assert "tensorrt" in float_.source.note


def test_margin_is_top1_minus_runner_up(tiny_build):
    ref = _reference(tiny_build, "onnxruntime-fp32")
    conf, margin = (np.array(ref.splits["val"].signals[s]) for s in ("confidence", "margin"))
    assert margin == pytest.approx(2 * conf - 1, abs=2e-6)  # two classes


def test_a_changed_reference_makes_the_bundle_refuse_to_load(bundle_copy):
    folder = bundle_copy("onnxruntime-int8")
    path = folder / "reference.json"
    ref = json.loads(path.read_text())
    ref["splits"]["val"]["signals"]["mean"][0] += 1.0
    path.write_text(json.dumps(ref, separators=(",", ":")))
    with pytest.raises(BundleError, match="reference.json"):
        load_bundle(folder)


def test_a_removed_reference_makes_the_bundle_refuse_to_load(bundle_copy):
    folder = bundle_copy("openvino-fp32")
    (folder / "reference.json").unlink()
    with pytest.raises(BundleError, match="incomplete: reference.json is missing"):
        load_bundle(folder)


def test_the_reference_is_compact(tiny_build):
    size = (tiny_build["dist"] / "onnxruntime-fp32" / "reference.json").stat().st_size
    assert size < 64 * len(SIGNALS) * 12 + 2000  # about 10 bytes a value: 1000 images make ~80 KB
