"""Integrity: a bundle runs only as the build wrote it."""

import json

import pytest

from pipeline.errors import BundleError
from runtime import Predictor
from runtime.bundle import load_bundle


def test_intact_bundle_loads(bundle_copy):
    b = load_bundle(bundle_copy())
    assert (b.target, b.precision, b.labels) == ("onnxruntime", "fp32", ["left", "right"])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: _flip_last_byte(d / "model.onnx"), "model.onnx was changed after the build"),
    (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-10]), "model.onnx has"),
    (lambda d: (d / "model.onnx").unlink(), "incomplete: model.onnx is missing"),
    (lambda d: (d / "bundle.json").unlink(), "no bundle.json"),
    (lambda d: (d / "extra.py").write_text("import os"), "extra.py not listed in bundle.json"),
    (lambda d: (d / ".hidden").write_text(""), ".hidden not listed in bundle.json"),
    (lambda d: (d / "bundle.json").write_text("{ not json"), "bundle.json is not valid JSON"),
])
def test_tampered_or_incomplete_bundle_is_refused(bundle_copy, damage, fragment):
    folder = bundle_copy()
    damage(folder)
    with pytest.raises(BundleError) as e:
        Predictor(folder)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_a_listed_path_outside_the_bundle_is_refused(bundle_copy, tmp_path):
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    (tmp_path / "outside.onnx").write_bytes((folder / "model.onnx").read_bytes())
    meta["files"]["../outside.onnx"] = meta["files"]["model.onnx"]
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="not a plain file name"):
        load_bundle(folder)


def test_an_archive_or_a_missing_folder_says_what_to_pass(tiny_build, tmp_path):
    with pytest.raises(BundleError, match="extract it first: tar xzf"):
        load_bundle(tiny_build["dist"] / "tiny-onnxruntime-fp32.tar.gz")
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_bundle_of_another_schema_is_refused(bundle_copy):
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    meta["schema"] = "edgepipe-bundle/99"
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema 'edgepipe-bundle/99'"):
        load_bundle(folder)
