"""The deploy bundle (schema "edgepipe-bundle/2") and its integrity check. numpy, pydantic + stdlib.

A bundle is one flat folder: the model file(s) and `bundle.json`, nothing else (and `bundle.sig`
when it is signed). bundle.json lists every other file with its sha256 and size, and carries the
sha256 of its own content (`integrity.meta_sha256`: the canonical JSON of bundle.json minus the
"integrity" key, see canonical_meta). Loading refuses a bundle whose bundle.json is damaged,
malformed or edited (labels swapped, preprocessing changed), where a listed file is missing or
differs, or where a file is present that bundle.json does not list: on a field unit a half-copied
or hand-edited bundle is worse than none. The one exception is TensorRT: its bundle names the files
the device itself writes (`device_files`: the engine plan and its caches).

The digest catches accidents, not an attacker, who can recompute it: for that the release pipeline
signs the same canonical bytes (runtime/signing.py, `bundle.sig`) and a device given trusted keys
(`load_bundle(path, trusted_keys=...)`, `--trust`) runs only bundles signed by one of them.

bundle.json keys: schema, name, artifact, target, precision, labels, preprocess (PreprocessSpec
dict), input / output {name, shape, dtype}, model {path, format}, runtime {package, version,
install}, verified {how, note, accuracy, latency_ms, ... from the build report}, gates, build
{config_sha256, report_sha256, ...}, tool_versions, files {name: {sha256, bytes}}, device_files,
integrity {meta_sha256}. BundleMeta below is the structure a loaded bundle.json must have.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from edgepipe.core.errors import BundleError
from edgepipe.core.files import sha256_file
from edgepipe.core.preprocess import PreprocessSpec

SCHEMA = "edgepipe-bundle/2"
# Schemas this edgepipe wrote before, and why it no longer reads them.
OLD_SCHEMAS = {"edgepipe-bundle/1": "written by an older edgepipe, without the digest of its own metadata"}
MANIFEST = "bundle.json"
SIGNATURE = "bundle.sig"  # written by `--sign`; not listed in files (it signs them)
# Written by `edgepipe engine` on the device, so they cannot be hashed at build time.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # flat: no folders, no "..", no hidden files


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def canonical_meta(meta: dict) -> bytes:
    """The bytes the integrity digest and the signature cover: bundle.json minus "integrity", as
    compact JSON with sorted keys. A float survives the JSON round trip exactly, so writer and
    reader compute the same bytes; NaN / Infinity are not JSON and raise ValueError."""
    body = {k: v for k, v in meta.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def seal(meta: dict) -> dict:
    """meta with its "integrity" digest: what write_bundle writes (and what a test that edits
    bundle.json on purpose writes back, to get past the digest to the check it exercises)."""
    body = {k: v for k, v in meta.items() if k != "integrity"}
    return {**body, "integrity": {"meta_sha256": hashlib.sha256(canonical_meta(body)).hexdigest()}}


# -- the structure of bundle.json ---------------------------------------------------------------
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, StringConstraints(min_length=1)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


class _Part(BaseModel):
    # strict: "1" is not 1, a list is not a dict; extra keys pass (the digest covers them anyway)
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class FileEntry(_Part):
    sha256: Hex64
    bytes: Count


class TensorSpec(_Part):
    name: Text
    shape: list[Count | None]
    dtype: Text


class ModelSpec(_Part):
    path: Text
    format: str | None = None
    details: dict | None = None


class PreprocessMeta(_Part):
    image_size: Annotated[int, Field(ge=1, le=16384)]
    mean: Annotated[list[float], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]
    resize: Literal["bilinear-antialias"] = "bilinear-antialias"  # what edgepipe.core.preprocess implements
    layout: Literal["NCHW"] = "NCHW"


class RuntimeMeta(_Part):
    package: Text
    version: str | None = None
    install: str | None = None


class Method(_Part):
    threads: Positive | None = None
    warmup: Count | None = None
    runs: Positive | None = None
    throughput_batch: Positive | None = None


class Verified(_Part):
    how: Literal["measured", "proxy", "none"]
    note: str | None = None
    test_images: Count | None = None
    accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    per_class_recall: dict[str, float | None] | None = None
    confusion: list[list[Count]] | None = None
    latency_ms: dict[str, float | None] | None = None
    throughput: dict[str, float | None] | None = None
    machine: dict | None = None
    method: Method | None = None


class Gates(_Part):
    passed: bool | None
    failed: list[str]


class Integrity(_Part):
    meta_sha256: Hex64


class BundleMeta(_Part):
    schema_: str = Field(alias="schema")
    name: Text
    artifact: str | None = None
    target: Text
    precision: Text
    created: str | None = None
    labels: Annotated[list[Text], Field(min_length=1)]
    preprocess: PreprocessMeta
    input: TensorSpec
    output: TensorSpec
    model: ModelSpec
    runtime: RuntimeMeta | None = None
    verified: Verified | None = None
    gates: Gates | None = None
    build: dict | None = None
    tool_versions: dict[str, str | None] | None = None
    files: Annotated[dict[Text, FileEntry], Field(min_length=1)]
    device_files: list[Text] = []
    integrity: Integrity

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if dupes := sorted({x for x in labels if labels.count(x) > 1}):
            raise ValueError(f"repeats {', '.join(map(repr, dupes))}: each class needs its own label")
        return labels

    @field_validator("files", "device_files")
    @classmethod
    def _plain_names(cls, names):
        for name in names:
            if not _SAFE_NAME.match(name) or name in (MANIFEST, SIGNATURE):
                raise ValueError(f"{name!r} is not a plain file name in the bundle")
        return names

    @model_validator(mode="after")
    def _model_is_a_file(self) -> "BundleMeta":
        if self.model.path not in self.files:
            raise ValueError(f"model.path {self.model.path!r} is not one of the files listed in files")
        return self


def _key(loc: tuple) -> str:
    """('files', 'model.onnx', 'sha256') -> files['model.onnx'].sha256; ('labels', 1) -> labels[1]."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out


def _nonfinite(value: Any, loc: tuple = ()) -> tuple | None:
    """Where a NaN or Infinity sits in the parsed JSON (Python's json reads them; they are not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if (found := _nonfinite(v, (*loc, k))) is not None:
            return found
    return None


def validate_meta(meta: dict) -> BundleMeta:
    """The parsed bundle.json as BundleMeta; ValueError naming the first bad key otherwise (one line)."""
    try:
        loc = _nonfinite(meta)
    except RecursionError:
        raise ValueError("nested too deeply to be a bundle's metadata") from None
    if loc is not None:
        raise ValueError(f"{_key(loc)} is {_at(meta, loc)!r}: NaN and Infinity are not valid JSON numbers")
    try:
        return BundleMeta.model_validate(meta)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        key, msg = _key(err["loc"]), re.sub(r" or instance of \w+$", "", err["msg"].removeprefix("Value error, "))
        if err["type"] == "missing":
            raise ValueError(f"lacks key {key}") from None
        if not key:
            raise ValueError(msg) from None
        got = repr(err.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        raise ValueError(f"key {key}: {msg} (found {got})".replace("\n", " ")) from None


def _at(meta: Any, loc: tuple) -> Any:
    for k in loc:
        meta = meta[k]
    return meta


@dataclass(frozen=True)
class Bundle:
    root: Path
    meta: dict
    signed_by: str | None = None  # key id of the trusted key whose signature was verified (trusted_keys given)

    @property
    def name(self) -> str:
        return f"{self.meta['name']}/{self.target}-{self.precision}"

    @property
    def target(self) -> str:
        return self.meta["target"]

    @property
    def precision(self) -> str:
        return self.meta["precision"]

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])

    @property
    def model_path(self) -> Path:
        return self.root / self.meta["model"]["path"]

    @property
    def verified(self) -> dict:
        return self.meta.get("verified") or {"how": "none"}

    def method(self, key: str, default):
        """A setting of the build's verify stage (threads, warmup, runs, throughput_batch)."""
        return (self.verified.get("method") or {}).get(key, default)


def _refuse(root: Path, problem: str, fix: str = "copy the bundle again from its .tar.gz release asset") -> BundleError:
    return BundleError(f"bundle {root}: {problem}", fix)


def _read_manifest(root: Path) -> dict:
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        raise BundleError(f"{root} is a bundle archive, not a bundle folder", f"extract it first: tar xzf {root}")
    if not root.is_dir():
        raise BundleError(f"bundle folder {root} " + ("is a file, not a folder" if root.exists() else "does not exist"),
                          "pass the folder the build wrote, e.g. dist/<name>/<target>-<precision>")
    path = root / MANIFEST
    if not path.is_file():
        inside = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
        if inside:  # dist/<name>: the build's folder of bundles, one per artifact
            if len(inside) == 1:
                raise BundleError(f"{root} is a build's folder of bundles, not a bundle", f"pass {inside[0]}")
            shown = ", ".join(str(p) for p in inside[:4]) + (", ..." if len(inside) > 4 else "")
            raise BundleError(f"{root} is a build's folder of {len(inside)} bundles, not one", f"pass one of them: {shown}")
        raise _refuse(root, f"no {MANIFEST}: not an edgepipe bundle, or an incomplete copy")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, and int() past 4300 digits
        raise _refuse(root, f"{MANIFEST} is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise _refuse(root, f"{MANIFEST} is nested too deeply to be a bundle's metadata") from None
    if not isinstance(meta, dict):
        raise _refuse(root, f"{MANIFEST} is damaged: it holds a JSON {type(meta).__name__}, not an object")
    if meta.get("schema") != SCHEMA:
        found = meta.get("schema")
        if isinstance(found, str) and found in OLD_SCHEMAS:
            raise _refuse(root, f"{MANIFEST} has schema {found!r} ({OLD_SCHEMAS[found]}), this edgepipe reads {SCHEMA!r}",
                          "install the edgepipe version that built the bundle, or rebuild it with this edgepipe: "
                          "`edgepipe bundle CONFIG` on the build machine")
        raise _refuse(root, f"{MANIFEST} has schema {found!r}, this edgepipe reads {SCHEMA!r}",
                      "install the edgepipe version that built the bundle, or rebuild it")
    try:
        validate_meta(meta)
    except ValueError as e:
        raise _refuse(root, f"{MANIFEST} is damaged or was edited: {e}") from None
    digest = hashlib.sha256(canonical_meta(meta)).hexdigest()
    if digest != meta["integrity"]["meta_sha256"]:
        raise _refuse(root, f"{MANIFEST} was changed after the build (its content does not match its "
                            "integrity.meta_sha256: labels, preprocessing or file hashes edited)")
    return meta


def check_signature(root: Path, meta: dict, trusted: dict) -> str:
    """The key id of the trusted key that signed this bundle.json; BundleError otherwise."""
    from edgepipe.runtime.signing import SignatureRefused, parse_record
    from edgepipe.runtime.signing import check_signature as verify

    path = root / SIGNATURE
    if not path.is_file():
        raise _refuse(root, f"not signed (no {SIGNATURE}), and this device runs only bundles signed by a trusted key",
                      "install the bundle the release pipeline signed (edgepipe build --sign KEY)")
    try:
        record = parse_record(path.read_text())
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise _refuse(root, f"{SIGNATURE} is damaged ({e})") from None
    try:
        return verify(record, canonical_meta(meta), trusted)
    except SignatureRefused as e:
        raise _refuse(root, e.problem, e.fix) from None


def check_files(root: Path, meta: dict) -> None:
    """Every listed file present with its size and sha256; nothing unlisted besides device files."""
    listed = meta["files"]
    allowed = set(listed) | {MANIFEST, SIGNATURE} | set(meta.get("device_files", ()))
    extra = sorted(p.name for p in root.iterdir() if p.name not in allowed)  # cheap: before any hashing
    if extra:
        raise _refuse(root, f"{', '.join(extra)} not listed in {MANIFEST}: the bundle was modified",
                      "remove what was added, or copy the bundle again from its .tar.gz release asset")
    for name, entry in listed.items():  # names were checked as plain file names by validate_meta
        path = root / name
        if path.is_symlink():  # its target could change between this check and the load
            raise _refuse(root, f"{name} is a symbolic link; a bundle holds plain files only")
        if not path.is_file():
            raise _refuse(root, f"incomplete: {name} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise _refuse(root, f"{name} has {size} bytes, {MANIFEST} says {entry['bytes']} (truncated or replaced)")
        if sha256_file(path) != entry["sha256"]:
            raise _refuse(root, f"{name} was changed after the build (sha256 differs from {MANIFEST})")


def load_bundle(path: str | Path, trusted_keys=None) -> Bundle:
    """Read and check a bundle folder; raises BundleError (one line, with the fix) if it must not run.

    trusted_keys: None (no signature needed; a signed bundle loads as any other), or one public
    key or a list of them (rotation: old and new), each a path to a PEM file, PEM bytes, the raw
    32 bytes or an Ed25519PublicKey; then the bundle must carry a bundle.sig by one of them that
    verifies. A key that cannot be read raises edgepipe.runtime.signing.KeyFileError (exit 2)."""
    trusted = None
    if trusted_keys is not None:
        from edgepipe.runtime.signing import load_trusted_keys

        trusted = load_trusted_keys(trusted_keys)
    root = Path(path)
    meta = _read_manifest(root)
    signer = check_signature(root, meta, trusted) if trusted is not None else None
    check_files(root, meta)  # after the signature: the hashes it checks against are then the signed ones
    return Bundle(root, meta, signed_by=signer)
