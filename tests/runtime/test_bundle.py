"""Integrity: a bundle runs only as the build wrote it."""

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import BundleError
from edgepipe.runtime import Predictor
from edgepipe.runtime.bundle import canonical_meta, load_bundle, seal
from tests.corpus import DAMAGED_BUNDLE_META
from tests.pipeline.test_cli import one_line_error


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
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match="notes.txt is a file, not a folder") as e:
        load_bundle(tmp_path / "notes.txt")
    assert "dist/<name>/<target>-<precision>" in str(e.value)
    with pytest.raises(BundleError, match=r"is a build's folder of \d+ bundles, not one") as e:  # dist/<name>
        load_bundle(tiny_build["dist"])
    assert f"pass one of them: {tiny_build['dist'] / 'onnxruntime-fp32'}, " in str(e.value)
    one = tmp_path / "dist-one"  # a build with one target: its folder holds one bundle
    shutil.copytree(tiny_build["dist"] / "onnxruntime-fp32", one / "onnxruntime-fp32")
    with pytest.raises(BundleError, match="is a build's folder of bundles, not a bundle") as e:
        load_bundle(one)
    assert e.value.fix == f"pass {one / 'onnxruntime-fp32'}"


def test_bundle_of_another_schema_is_refused(bundle_copy):
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    meta["schema"] = "edgepipe-bundle/99"
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema 'edgepipe-bundle/99'"):
        load_bundle(folder)


# -- bundle.json is covered by its own digest, and validated ------------------------------------
def _edit_meta(folder, edit):
    meta = json.loads((folder / "bundle.json").read_text())
    edit(meta)
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2))


@pytest.mark.parametrize("edit", [
    lambda m: m.update(labels=m["labels"][::-1]),  # swapped labels: every prediction flips
    lambda m: m["preprocess"].update(mean=[0.4, 0.5, 0.5]),
    lambda m: m["preprocess"].update(image_size=m["preprocess"]["image_size"] * 2),
    lambda m: m["verified"].update(accuracy=0.99),
], ids=["labels-swapped", "preprocess-mean", "image-size", "verified-accuracy"])
def test_edited_metadata_is_refused(bundle_copy, edit):
    folder = bundle_copy()
    _edit_meta(folder, edit)
    with pytest.raises(BundleError) as e:
        Predictor(folder)
    assert "bundle.json was changed after the build" in str(e.value) and "\n" not in str(e.value)
    assert "copy the bundle again from its .tar.gz release asset" in str(e.value) and e.value.exit_code == 2


def test_integrity_digest_is_of_the_canonical_json_minus_itself(bundle_copy):
    meta = json.loads((bundle_copy() / "bundle.json").read_text())
    body = {k: v for k, v in meta.items() if k != "integrity"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert meta["schema"] == "edgepipe-bundle/2"
    assert meta["integrity"] == {"meta_sha256": hashlib.sha256(canonical).hexdigest()}
    assert canonical_meta(meta) == canonical and seal(body) == meta


def test_bundle_of_the_older_schema_says_to_rebuild(bundle_copy):
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    meta["schema"] = "edgepipe-bundle/1"  # as an older edgepipe wrote it: no integrity digest
    del meta["integrity"]
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError) as e:
        load_bundle(folder)
    assert "schema 'edgepipe-bundle/1'" in str(e.value) and "this edgepipe reads 'edgepipe-bundle/2'" in str(e.value)
    assert "install the edgepipe version that built the bundle, or rebuild it" in str(e.value)
    assert "`edgepipe bundle CONFIG`" in str(e.value)


def _invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.mark.parametrize("case", sorted(DAMAGED_BUNDLE_META))
def test_damaged_bundle_json_is_one_line_naming_the_key(bundle_copy, tiny_build, case):
    damage, fragment = DAMAGED_BUNDLE_META[case]
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    meta = damage(meta) or meta
    try:
        meta = seal(meta)  # a fresh digest: only the structure check can refuse it
        meta = damage(meta) or meta  # again (idempotent): a damaged "integrity" stays damaged
    except (AttributeError, ValueError):  # a list, or NaN (not JSON): the digest cannot be computed
        pass
    (folder / "bundle.json").write_text(json.dumps(meta))
    for args in (("predict", folder, min(tiny_build["images"].rglob("*.png"))), ("check", folder, tiny_build["images"]),
                 ("bench", folder)):
        result = _invoke(*args)
        one_line_error(result, 2, fragment)
        assert "internal error" not in result.output and result.stderr.count("\n") == 1, result.stderr


def test_a_bundle_json_python_cannot_parse_is_one_line(bundle_copy):
    """A 5000-digit number is valid JSON that Python's json refuses with a plain ValueError."""
    folder = bundle_copy()
    text = (folder / "bundle.json").read_text()
    (folder / "bundle.json").write_text(text.rstrip()[:-1] + ', "n": ' + "9" * 5000 + "}\n")
    with pytest.raises(BundleError, match="bundle.json is not valid JSON"):
        load_bundle(folder)


def test_a_listed_file_that_is_a_symlink_is_refused(bundle_copy, tmp_path):
    folder = bundle_copy()
    model = folder / "model.onnx"
    outside = tmp_path / "elsewhere.onnx"
    model.rename(outside)
    model.symlink_to(outside)  # same bytes, but the target can change after the check
    with pytest.raises(BundleError, match="model.onnx is a symbolic link"):
        load_bundle(folder)
