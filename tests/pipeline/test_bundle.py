"""The bundle stage on a tiny build: what goes into each bundle, what is left out and why, archives."""

import copy
import hashlib
import json
import tarfile

import pytest

from edgepipe.core.errors import MissingArtifactError
from edgepipe.pipeline.bundle import run_bundle
from edgepipe.pipeline.manifest import Manifest
from edgepipe.runtime.bundle import load_bundle
from tests.conftest import TINY_SPEC


def _meta(tiny_build, name):
    return json.loads((tiny_build["dist"] / name / "bundle.json").read_text())


def test_one_bundle_per_verified_artifact_and_none_for_the_failed_one(tiny_build):
    dist = tiny_build["dist"]
    folders = sorted(p.name for p in dist.iterdir() if p.is_dir())
    assert folders == ["onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "tensorrt-fp16", "tensorrt-int8"]
    stage = tiny_build["manifest"].data["stages"]["bundle"]
    assert stage["metrics"]["skipped"] == {"openvino-int8": "failed to build: boom"}
    assert {b["artifact"] for b in stage["bundles"]} == set(folders)


def test_bundle_json_carries_the_build_report_numbers_and_the_training_preprocessing(tiny_build):
    report = json.loads((tiny_build["cfg"].output_dir / "report.json").read_text())
    row = next(r for r in report["rows"] if r["name"] == "onnxruntime-int8")
    meta = _meta(tiny_build, "onnxruntime-int8")
    assert meta["labels"] == ["left", "right"] and meta["preprocess"] == json.loads(json.dumps(TINY_SPEC.to_dict()))
    assert meta["input"] == {"name": "input", "shape": [None, 3, 32, 32], "dtype": "float32"}
    assert meta["output"]["shape"] == [None, 2]
    v = meta["verified"]
    assert v["how"] == "measured" and v["accuracy"] == row["accuracy"] and v["latency_ms"] == row["latency_ms"]
    assert v["confusion"] == row["confusion"] and v["test_images"] == 64 and v["method"]["threads"] == 1
    assert meta["gates"] == {"passed": True, "failed": []}
    assert meta["runtime"]["install"].endswith(f"onnxruntime=={meta['tool_versions']['onnxruntime']}")
    assert meta["build"]["report_sha256"] == hashlib.sha256((tiny_build["cfg"].output_dir / "report.json").read_bytes()).hexdigest()


def test_files_are_listed_with_their_sha256_and_nothing_else_is_shipped(tiny_build):
    for folder in tiny_build["dist"].iterdir():
        if folder.is_dir():
            meta = _meta(tiny_build, folder.name)
            assert {p.name for p in folder.iterdir()} == set(meta["files"]) | {"bundle.json"}
            for name, entry in meta["files"].items():
                assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    assert set(_meta(tiny_build, "openvino-fp32")["files"]) == {"model.xml", "model.bin", "reference.json"}


def test_tensorrt_bundles_go_to_the_device_with_how_they_were_verified(tiny_build):
    int8 = _meta(tiny_build, "tensorrt-int8")
    assert {"model_qdq.onnx", "trt_engine.py", "build_engine.sh"} <= set(int8["files"])
    assert not [f for f in int8["files"] if f.endswith(".npz")]  # no calibration data: nothing there reads it
    assert "model.plan" not in int8["files"] and "model.plan" in int8["device_files"]
    assert int8["model"]["path"] == "model_qdq.onnx" and int8["verified"]["how"] == "proxy"
    assert int8["verified"]["row"] == "tensorrt-int8-proxy" and "proxy" in int8["verified"]["note"]
    fp16 = _meta(tiny_build, "tensorrt-fp16")
    assert fp16["verified"]["how"] == "none" and "accuracy" not in fp16["verified"]
    assert fp16["gates"]["passed"] is None and {"model.onnx", "model_fp16.onnx"} <= set(fp16["files"])
    assert (tiny_build["dist"] / "tensorrt-int8" / "build_engine.sh").stat().st_mode & 0o111


def test_archive_is_the_bundle_under_one_folder_and_its_sha256_file_matches(tiny_build, tmp_path):
    archive = tiny_build["dist"] / "tiny-openvino-fp32.tar.gz"
    digest, name = (tiny_build["dist"] / "tiny-openvino-fp32.tar.gz.sha256").read_text().split()
    assert name == archive.name and digest == hashlib.sha256(archive.read_bytes()).hexdigest()
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["tiny-openvino-fp32", "tiny-openvino-fp32/bundle.json",
                                          "tiny-openvino-fp32/model.bin", "tiny-openvino-fp32/model.xml",
                                          "tiny-openvino-fp32/reference.json"]
        tar.extractall(tmp_path, filter="data")
    assert load_bundle(tmp_path / "tiny-openvino-fp32").target == "openvino"


def test_rerun_replaces_bundles_and_removes_stale_ones(tiny_build):
    cfg, dist = tiny_build["cfg"], tiny_build["dist"]
    stale = dist / "onnxruntime-fp16"
    stale.mkdir()
    (stale / "bundle.json").write_text("{}")
    (dist / "tiny-onnxruntime-fp16.tar.gz").write_bytes(b"old")
    (dist / "notes.txt").write_text("the user's own file")
    before = _meta(tiny_build, "onnxruntime-fp32")
    manifest = Manifest(tiny_build["manifest"].out_dir, copy.deepcopy(tiny_build["manifest"].data))
    run_bundle(cfg, manifest)  # the recorded drift references: no dataset, no model run
    assert not stale.exists() and not (dist / "tiny-onnxruntime-fp16.tar.gz").exists()
    assert (dist / "notes.txt").exists()
    assert _meta(tiny_build, "onnxruntime-fp32")["files"] == before["files"]
    assert not [p for p in dist.iterdir() if p.name.startswith(".")], "no temp folders left behind"


def test_refuses_to_bundle_when_the_report_predates_the_artifacts(tiny_build):
    data = copy.deepcopy(tiny_build["manifest"].data)
    data["stages"]["verify"]["finished"] = "2000-01-01T00:00:00+00:00"
    with pytest.raises(MissingArtifactError, match="verify results are older than the quantize outputs"):
        run_bundle(tiny_build["cfg"], Manifest(tiny_build["manifest"].out_dir, data))


# -- signing (--sign KEY): see tests/runtime/test_signing.py for the device side ------------------
def _bad_keys(folder):
    """name -> a --sign KEY that must be refused before any bundle is touched."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    pem = serialization.Encoding.PEM
    good = ed25519.Ed25519PrivateKey.generate()
    keys = {
        "missing.key": None,
        "text.key": b"not a key\n",
        "encrypted.key": good.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")),
        "rsa.key": rsa.generate_private_key(65537, 2048).private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                      serialization.NoEncryption()),
        "public.key": good.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for name, data in keys.items():
        if data is not None:
            (folder / name).write_bytes(data)
    return {name: folder / name for name in keys}


@pytest.mark.parametrize("name, fragment", [
    ("missing.key", "does not exist"), ("text.key", "is not a PEM private key"),
    ("encrypted.key", "is encrypted: edgepipe signs with an unencrypted key"),
    ("rsa.key", "is an RSA key, not Ed25519"), ("public.key", "is a public key: signing needs the private key"),
])
def test_a_bad_signing_key_fails_in_one_line_before_any_bundle_is_rewritten(tiny_build, tmp_path, name, fragment):
    from edgepipe.runtime.signing import KeyFileError
    from tests.runtime.test_signing import sign_tiny_build

    cfg, manifest, dist = sign_tiny_build(tiny_build, tmp_path, key_path=None)  # a private copy, unsigned
    before = {p: p.read_bytes() for p in sorted(dist.rglob("*")) if p.is_file()}
    stage_before = copy.deepcopy(manifest.data["stages"]["bundle"])
    with pytest.raises(KeyFileError) as e:
        run_bundle(cfg, manifest, sign_key=_bad_keys(tmp_path)[name])
    assert fragment in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2
    assert {p: p.read_bytes() for p in sorted(dist.rglob("*")) if p.is_file()} == before, "bundles unchanged"
    assert manifest.data["stages"]["bundle"] == stage_before


def test_signed_bundles_carry_bundle_sig_and_unsigned_ones_do_not(tiny_build, tmp_path):
    from edgepipe.runtime.signing import generate_key_files
    from tests.runtime.test_signing import sign_tiny_build

    assert not list(tiny_build["dist"].rglob("bundle.sig"))
    kid = generate_key_files(tmp_path / "release.key")
    _, manifest, dist = sign_tiny_build(tiny_build, tmp_path / "copy", tmp_path / "release.key")
    folders = sorted(p for p in dist.iterdir() if p.is_dir())
    assert len(folders) == 5 and all((f / "bundle.sig").is_file() for f in folders)
    for f in folders:
        assert load_bundle(f, trusted_keys=tmp_path / "release.key.pub").signed_by == kid
        assert {p.name for p in f.iterdir()} == set(json.loads((f / "bundle.json").read_text())["files"]) | {
            "bundle.json", "bundle.sig"}
    with tarfile.open(dist / "tiny-onnxruntime-int8.tar.gz") as tar:
        assert "tiny-onnxruntime-int8/bundle.sig" in tar.getnames()
    assert {b["signed_by"] for b in manifest.data["stages"]["bundle"]["bundles"]} == {kid}
