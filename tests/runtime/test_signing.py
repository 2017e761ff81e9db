"""Signed bundles: `--sign KEY` at build, `--trust PUBKEY` on the device (runtime/signing.py).

The release pipeline signs the canonical bundle.json (labels, preprocessing, every file's sha256);
a device given trusted keys runs only a bundle signed by one of them that still verifies."""

import copy
import json
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgepipe.cli import cli
from edgepipe.core.errors import BundleError
from edgepipe.pipeline.bundle import run_bundle
from edgepipe.pipeline.manifest import Manifest
from edgepipe.runtime import Predictor
from edgepipe.runtime.bundle import canonical_meta, file_entry, load_bundle, seal
from edgepipe.runtime.signing import KeyFileError, generate_key_files, key_id, load_private_key, sign
from tests.pipeline.test_cli import one_line_error


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def sign_tiny_build(tiny_build, root, key_path):
    """The tiny build copied under root (its dist too) and bundled again with --sign key_path;
    returns (cfg, manifest, dist). The session's tiny_build stays as it was."""
    cfg = tiny_build["cfg"]
    shutil.copytree(cfg.output_dir, root / "build")
    shutil.copytree(tiny_build["dist"], root / "dist" / cfg.name)
    cfg = cfg.model_copy(update={"output_dir": root / "build",
                                 "bundle": cfg.bundle.model_copy(update={"dist_dir": root / "dist"})})
    manifest = Manifest(root / "build", copy.deepcopy(tiny_build["manifest"].data))
    if key_path is not None:
        run_bundle(cfg, manifest, sign_key=key_path)
    return cfg, manifest, root / "dist" / cfg.name


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs, as `edgepipe keygen` writes them: {"a": (private, public, key id), "b": ...}."""
    root = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("a", "b"):
        kid = generate_key_files(root / f"{name}.key")
        out[name] = (root / f"{name}.key", root / f"{name}.key.pub", kid)
    return out


@pytest.fixture(scope="module")
def signed(tiny_build, keys, tmp_path_factory):
    """The tiny build's bundles, signed with key a."""
    _, manifest, dist = sign_tiny_build(tiny_build, tmp_path_factory.mktemp("signed"), keys["a"][0])
    return {"dist": dist, "manifest": manifest}


@pytest.fixture
def signed_copy(signed, tmp_path):
    def _copy(name="onnxruntime-fp32"):
        return shutil.copytree(signed["dist"] / name, tmp_path / name)

    return _copy


def _image(tiny_build):
    return min(tiny_build["images"].rglob("*.png"))


def test_keygen_writes_a_0600_private_key_and_its_public_key_and_never_overwrites(tmp_path):
    key = tmp_path / "release.key"
    result = invoke("keygen", key)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    public = serialization.load_pem_public_key((tmp_path / "release.key.pub").read_bytes())
    assert isinstance(private, Ed25519PrivateKey) and isinstance(public, Ed25519PublicKey)
    assert result.stdout.strip() == key_id(public) == key_id(private.public_key())
    before = key.read_bytes(), (tmp_path / "release.key.pub").read_bytes()
    one_line_error(invoke("keygen", key), 2, "already exists: keygen never overwrites a key")
    assert (key.read_bytes(), (tmp_path / "release.key.pub").read_bytes()) == before
    (tmp_path / "other.key.pub").write_text("someone's public key")  # the .pub alone blocks it too
    one_line_error(invoke("keygen", tmp_path / "other.key"), 2, "other.key.pub already exists")
    assert not (tmp_path / "other.key").exists()


def test_signing_writes_bundle_sig_over_the_canonical_metadata_into_the_folder_and_the_archive(signed, keys, tmp_path):
    _, public, kid = keys["a"]
    folder = signed["dist"] / "openvino-fp32"
    meta = json.loads((folder / "bundle.json").read_text())
    sig = json.loads((folder / "bundle.sig").read_text())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == kid and sig["signed"] == "bundle.json"
    trusted = serialization.load_pem_public_key(public.read_bytes())
    assert bytes.fromhex(sig["public_key"]) == trusted.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    trusted.verify(bytes.fromhex(sig["signature"]), canonical_meta(meta))  # raises if it does not verify
    assert sig["meta_sha256"] == meta["integrity"]["meta_sha256"]
    assert "bundle.sig" not in meta["files"]
    assert all(b["signed_by"] == kid for b in signed["manifest"].data["stages"]["bundle"]["bundles"])
    with tarfile.open(signed["dist"] / "tiny-openvino-fp32.tar.gz") as tar:
        assert "tiny-openvino-fp32/bundle.sig" in tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert load_bundle(tmp_path / "tiny-openvino-fp32", trusted_keys=public).signed_by == kid


def test_signed_bundle_with_its_key_trusted_loads_and_predicts(signed, keys, tiny_build):
    _, public, kid = keys["a"]
    folder = signed["dist"] / "onnxruntime-fp32"
    with Predictor(folder, trusted_key=public) as p:
        assert p.bundle.signed_by == kid
        assert p.predict(_image(tiny_build)).label in ("left", "right")
    for args in (("predict", folder, _image(tiny_build)), ("check", folder, tiny_build["images"]),
                 ("bench", folder, "--runs", "5")):
        result = invoke(*args, "--trust", public)
        assert result.exit_code == 0, (args, result.output)
    assert load_bundle(folder).signed_by is None  # without trust: loads as before, the signature unchecked


def test_unsigned_bundle_is_refused_when_keys_are_trusted(tiny_build, keys):
    folder = tiny_build["dist"] / "onnxruntime-fp32"
    assert load_bundle(folder).signed_by is None  # loads without --trust, as before
    public = keys["a"][1]
    for args in (("predict", folder, _image(tiny_build)), ("check", folder, tiny_build["images"]), ("bench", folder)):
        one_line_error(invoke(*args, "--trust", public), 2, "not signed (no bundle.sig)")
    with pytest.raises(BundleError, match="not signed"):
        Predictor(folder, trusted_key=public)


def test_bundle_signed_by_another_key_is_refused(signed, keys, tiny_build):
    folder = signed["dist"] / "onnxruntime-fp32"
    result = invoke("predict", folder, _image(tiny_build), "--trust", keys["b"][1])
    one_line_error(result, 2, f"signed by key {keys['a'][2]}, which is not a trusted key here (trusted: {keys['b'][2]})")
    with pytest.raises(BundleError, match="not a trusted key"):
        Predictor(folder, trusted_key=keys["b"][1])


def _rehash_attack(folder, model_bytes):
    """What an attacker with write access does: replace the model, rewrite its sha256 and size,
    recompute the metadata digest. The unsigned integrity check cannot tell."""
    meta = json.loads((folder / "bundle.json").read_text())
    model = folder / meta["model"]["path"]
    model.write_bytes(model_bytes)
    meta["files"][model.name] = file_entry(model)
    (folder / "bundle.json").write_text(json.dumps(seal(meta), indent=2))
    return meta


def test_consistent_rehash_attack_on_a_signed_bundle_is_refused(signed_copy, signed, keys, tiny_build):
    folder = signed_copy("onnxruntime-fp32")
    # another valid model (the int8 build): it loads and runs, so only the signature can tell
    other = signed["dist"] / "onnxruntime-int8"
    other_model = other / json.loads((other / "bundle.json").read_text())["model"]["path"]
    _rehash_attack(folder, other_model.read_bytes())
    assert load_bundle(folder).meta["files"]["model.onnx"]["bytes"] == other_model.stat().st_size  # hashes agree
    one_line_error(invoke("predict", folder, _image(tiny_build), "--trust", keys["a"][1]), 2,
                   f"signature of key {keys['a'][2]} does not verify: bundle.json was changed after signing")
    with pytest.raises(BundleError, match="does not verify"):
        Predictor(folder, trusted_key=keys["a"][1])


def test_rehashed_and_re_signed_bundle_is_refused(signed_copy, keys, tiny_build):
    folder = signed_copy("onnxruntime-fp32")
    meta = _rehash_attack(folder, (folder / "model.onnx").read_bytes() + b"\0")
    attacker = load_private_key(keys["b"][0])
    (folder / "bundle.sig").write_text(json.dumps(sign(attacker, canonical_meta(meta))))
    assert load_bundle(folder, trusted_keys=keys["b"][1]).signed_by == keys["b"][2]  # a valid signature, by b
    one_line_error(invoke("check", folder, tiny_build["images"], "--trust", keys["a"][1]), 2,
                   "which is not a trusted key here")


def test_two_trusted_keys_accept_a_bundle_signed_by_either(signed_copy, keys, tiny_build):
    by_a = signed_copy("onnxruntime-fp32")
    by_b = signed_copy("onnxruntime-int8")
    meta = json.loads((by_b / "bundle.json").read_text())
    (by_b / "bundle.sig").write_text(json.dumps(sign(load_private_key(keys["b"][0]), canonical_meta(meta))))
    both = [keys["a"][1], keys["b"][1]]
    assert load_bundle(by_a, trusted_keys=both).signed_by == keys["a"][2]
    assert load_bundle(by_b, trusted_keys=both).signed_by == keys["b"][2]
    with Predictor(by_b, trusted_key=[keys["b"][1].read_bytes(), keys["a"][1]]) as p:  # PEM bytes or paths
        assert p.predict(_image(tiny_build)).label in ("left", "right")
    for folder in (by_a, by_b):
        result = invoke("predict", folder, _image(tiny_build), "--trust", keys["a"][1], "--trust", keys["b"][1])
        assert result.exit_code == 0, result.output
    one_line_error(invoke("predict", by_b, _image(tiny_build), "--trust", keys["a"][1]), 2, "not a trusted key")


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.write_text("{ not json"), "bundle.sig is damaged (not valid JSON"),
    (lambda p: p.write_text("[]"), "bundle.sig is damaged (a JSON list, not an object)"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "algorithm": "rsa"})), "algorithm 'rsa'"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "signature": "zz"})), "'signature' is not 64 bytes"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                        "signature": "00" * 64})), "the signature in bundle.sig is not valid"),
    (lambda p: p.unlink(), "not signed (no bundle.sig)"),
])
def test_damaged_signature_file_is_refused_in_one_line(signed_copy, keys, damage, fragment):
    folder = signed_copy()
    damage(folder / "bundle.sig")
    with pytest.raises(BundleError) as e:
        load_bundle(folder, trusted_keys=keys["a"][1])
    assert fragment in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2


def test_trusted_key_files_that_cannot_be_used_exit_2(tiny_build, keys, tmp_path):
    folder, image = tiny_build["dist"] / "onnxruntime-fp32", _image(tiny_build)
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "junk.pub").write_text("hello")
    for key, fragment in ((keys["a"][0], "is a private key: a device needs only the public key"),
                          (tmp_path / "missing.pub", "missing.pub does not exist"),
                          (tmp_path / "junk.pub", "is not a PEM public key"),
                          (rsa_pub, "is an RSA key, not Ed25519")):
        one_line_error(invoke("predict", folder, image, "--trust", key), 2, fragment)
    with pytest.raises(KeyFileError, match="empty list of trusted keys"):
        load_bundle(folder, trusted_keys=[])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl here")
def test_keys_made_by_openssl_sign_and_verify(tiny_build, tmp_path, signed):
    key, pub = tmp_path / "ossl.key", tmp_path / "ossl.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True, capture_output=True)
    _, _, dist = sign_tiny_build(tiny_build, tmp_path / "b", key)
    assert load_bundle(dist / "onnxruntime-int8", trusted_keys=pub).signed_by == key_id(load_private_key(key).public_key())


def test_runtime_imports_cryptography_only_to_sign_or_verify():
    code = ("import sys, runtime, edgepipe.runtime.signing, edgepipe.runtime.bundle, edgepipe.runtime.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_keygen_leaves_no_half_written_key_on_a_full_disk(tmp_path, monkeypatch):
    import errno
    import os as os_module

    from edgepipe.runtime import signing

    def full(fd, data):
        raise OSError(errno.ENOSPC, os_module.strerror(errno.ENOSPC))

    monkeypatch.setattr(signing.os, "write", full)
    with pytest.raises(OSError):
        signing.generate_key_files(tmp_path / "release.key")
    assert not (tmp_path / "release.key").exists()
