"""Ed25519 signatures of deploy bundles: field units run only what the release pipeline built.

`edgepipe build --sign KEY` / `edgepipe bundle --sign KEY` write `bundle.sig` into each bundle;
`--trust PUBKEY` (or `load_bundle(..., trusted_keys=...)`, `Predictor(..., trusted_key=...)`)
refuses a bundle that is unsigned, signed by another key, or changed after signing.

bundle.sig (JSON): {"schema": "edgepipe-bundle-sig/1", "algorithm": "ed25519", "key_id": first 16 hex
of sha256(raw public key), "public_key": raw public key (hex), "signed": "bundle.json",
"meta_sha256": sha256 of the signed bytes, "signature": hex}. The signed bytes are the canonical
JSON of bundle.json minus its "integrity" key (edgepipe.runtime.bundle.canonical_meta), so the signature
covers the labels, the preprocessing and every file's sha256 and size: each model file transitively.

Keys: PEM files as `openssl genpkey -algorithm ed25519` (private, PKCS#8, unencrypted) and
`openssl pkey -pubout` (public) write them, which is what `edgepipe keygen` writes too.
`cryptography` is imported inside the functions, so `import edgepipe.runtime` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgepipe.core.errors import EdgepipeError

SIG_SCHEMA = "edgepipe-bundle-sig/1"
ALGORITHM = "ed25519"
KEYGEN_FIX = "create one with `edgepipe keygen release.key` or `openssl genpkey -algorithm ed25519 -out release.key`"


class KeyFileError(EdgepipeError):
    """A signing or trusted key that cannot be used (missing, not PEM, encrypted, not Ed25519)."""


class SignatureRefused(Exception):
    """The bundle's signature does not satisfy the trusted keys; edgepipe.runtime.bundle turns it into a BundleError."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist", KEYGEN_FIX if what == "signing key" else
                           "pass the public key file `edgepipe keygen KEY` wrote beside the signing key (KEY.pub)") from None
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _kind(key) -> str:
    """'an RSA', 'an EC', 'an Ed448' ... from the key's class name."""
    name = type(key).__name__.lstrip("_").removesuffix("PrivateKey").removesuffix("PublicKey") or "unknown"
    return f"{'an' if name[0] in 'AEIOUR' else 'a'} {name}"


def raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public(public_key)).hexdigest()[:16]


def load_private_key(path: str | Path):
    """An unencrypted Ed25519 private key from a PEM file; KeyFileError (one line, exit 2) otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if path.is_dir():
        raise KeyFileError(f"signing key {path} is a folder, not a key file", KEYGEN_FIX)
    data = _read(path, "signing key")
    if b"-----BEGIN PUBLIC KEY-----" in data:
        raise KeyFileError(f"signing key {path} is a public key: signing needs the private key",
                           "pass the private key file (the one without .pub)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise KeyFileError(f"signing key {path} is encrypted: edgepipe signs with an unencrypted key",
                           f"decrypt it (openssl pkey -in {path} -out release.key) and keep that file in the "
                           "CI secret store") from None
    except UnsupportedAlgorithm:
        raise KeyFileError(f"signing key {path} is of a key type this cryptography cannot read: edgepipe signs "
                           "with Ed25519", KEYGEN_FIX) from None
    except ValueError:
        raise KeyFileError(f"signing key {path} is not a PEM private key", KEYGEN_FIX) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is {_kind(key)} key, not Ed25519: edgepipe signs with Ed25519",
                           KEYGEN_FIX)
    return key


def load_public_key(source: Any):
    """A trusted Ed25519 public key from a path (str / Path) to a PEM file, PEM bytes, the raw 32
    bytes, or a cryptography Ed25519PublicKey."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, Ed25519PrivateKey):
        raise KeyFileError("a private key was given as a trusted key", "trust its public key: key.public_key()")
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "trusted key (bytes)"
        if len(data) == 32 and not data.startswith(b"-----"):
            return Ed25519PublicKey.from_public_bytes(data)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise KeyFileError(f"trusted key {path} is a folder, not a public key file")
        data, where = _read(path, "trusted key"), f"trusted key {path}"
    else:
        raise KeyFileError(f"cannot use a {type(source).__name__} as a trusted key",
                           "pass the path of a PEM public key, its bytes, or an Ed25519PublicKey")
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{where} is a private key: a device needs only the public key",
                           "pass the .pub file `edgepipe keygen` wrote, or `openssl pkey -in KEY -pubout`; "
                           "never copy the private key to a device")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{where} is not a PEM public key",
                           "pass the .pub file `edgepipe keygen` wrote, or `openssl pkey -in KEY -pubout`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where} is {_kind(key)} key, not Ed25519: bundles are signed with Ed25519",
                           "trust the Ed25519 public key of the release pipeline")
    return key


def load_trusted_keys(sources: Any) -> dict[str, Any]:
    """One key source or an iterable of them (several: key rotation) -> {key_id: public key}.
    An empty iterable is an error, not "trust nothing was asked": it would silently run unchecked."""
    if isinstance(sources, (str, Path, bytes, bytearray)) or not isinstance(sources, Iterable):
        sources = [sources]
    keys = {}
    for source in sources:
        key = load_public_key(source)
        keys[key_id(key)] = key
    if not keys:
        raise KeyFileError("an empty list of trusted keys was given", "pass at least one public key, or None")
    return keys


def sign(private_key, data: bytes) -> dict:
    """The bundle.sig record of `data` (the canonical bundle.json bytes)."""
    public = private_key.public_key()
    return {"schema": SIG_SCHEMA, "algorithm": ALGORITHM, "key_id": key_id(public), "public_key": raw_public(public).hex(),
            "signed": "bundle.json", "meta_sha256": hashlib.sha256(data).hexdigest(),
            "signature": private_key.sign(data).hex()}


def parse_record(text: str) -> dict:
    """bundle.sig's content, shape-checked; ValueError (one line) if it is not a signature record."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    if record.get("schema") != SIG_SCHEMA:
        raise ValueError(f"schema {record.get('schema')!r}, this edgepipe reads {SIG_SCHEMA!r}")
    if record.get("algorithm") != ALGORITHM:
        raise ValueError(f"algorithm {record.get('algorithm')!r}, this edgepipe verifies {ALGORITHM!r}")
    for field, size in (("public_key", 32), ("signature", 64)):
        value = record.get(field)
        try:
            if not isinstance(value, str) or len(bytes.fromhex(value)) != size:
                raise ValueError
        except ValueError:
            raise ValueError(f"{field!r} is not {size} bytes of hex") from None
    return record


def check_signature(record: dict, data: bytes, trusted: dict[str, Any]) -> str:
    """The key id of the trusted key whose signature over `data` this record carries; SignatureRefused otherwise."""
    from cryptography.exceptions import InvalidSignature

    raw = bytes.fromhex(record["public_key"])
    kid = hashlib.sha256(raw).hexdigest()[:16]
    if kid not in trusted:
        claimed = f" (bundle.sig says key_id {record.get('key_id')!r})" if record.get("key_id") != kid else ""
        raise SignatureRefused(f"signed by key {kid}{claimed}, which is not a trusted key here "
                               f"(trusted: {', '.join(sorted(trusted))}): re-signed, or from another release pipeline",
                               "install the bundle the release pipeline signed, or trust its public key with --trust")
    try:
        trusted[kid].verify(bytes.fromhex(record["signature"]), data)
    except InvalidSignature:
        what = ("bundle.json was changed after signing (its digest differs from the one signed)"
                if record.get("meta_sha256") != hashlib.sha256(data).hexdigest()
                else "the signature in bundle.sig is not valid for bundle.json")
        raise SignatureRefused(f"signature of key {kid} does not verify: {what}",
                               "copy the bundle again from its .tar.gz release asset") from None
    return kid


def generate_key_files(path: str | Path) -> str:
    """Write a new Ed25519 private key to path (PEM, mode 0600) and its public key to path.pub (PEM);
    returns the key id. Refuses to overwrite either file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    for p in (path, pub):
        if p.exists() or p.is_symlink():
            raise KeyFileError(f"{p} already exists: keygen never overwrites a key",
                               "choose another path, or move the old key away first")
    if not path.parent.is_dir():
        raise KeyFileError(f"folder {path.parent} does not exist", f"create it first: mkdir -p {path.parent}")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(path, private_pem, 0o600)
    try:
        _write_new(pub, public_pem, 0o644)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return key_id(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create path (never overwrite, never follow a link) with exactly `mode`, and write data."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists: keygen never overwrites a key",
                           "choose another path, or move the old key away first") from None
    except OSError as e:
        raise KeyFileError(f"cannot create {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, mode)  # the umask may only narrow it; make it exact
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except BaseException:  # a half-written key would make the next keygen refuse "already exists"
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
