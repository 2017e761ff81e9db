"""The deploy bundle (schema "edgepipe-bundle/1") and its integrity check. numpy + stdlib only.

A bundle is one flat folder: the model file(s) and `bundle.json`, nothing else. bundle.json lists
every other file with its sha256 and size. Loading refuses a bundle where a listed file is
missing or differs, or where a file is present that bundle.json does not list: on a field unit a
half-copied or hand-edited bundle is worse than none. The one exception is TensorRT: its bundle
names the files the device itself writes (`device_files`: the engine plan and its caches).

bundle.json keys: schema, name, artifact, target, precision, labels, preprocess (PreprocessSpec
dict), input / output {name, shape, dtype}, model {path, format}, runtime {package, version,
install}, verified {how, note, accuracy, latency_ms, ... from the build report}, gates, build
{config_sha256, report_sha256, ...}, tool_versions, files {name: {sha256, bytes}}, device_files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.backbones import sha256_file
from pipeline.errors import BundleError
from pipeline.preprocess import PreprocessSpec

SCHEMA = "edgepipe-bundle/1"
MANIFEST = "bundle.json"
# Written by `edgepipe engine` on the device, so they cannot be hashed at build time.
TRT_DEVICE_FILES = ("model.plan", "engine.json", "timing.cache", "calibration.cache")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # flat: no folders, no "..", no hidden files
_REQUIRED = ("schema", "name", "target", "precision", "labels", "preprocess", "input", "model", "files")


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


@dataclass(frozen=True)
class Bundle:
    root: Path
    meta: dict

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
        raise BundleError(f"bundle folder {root} does not exist",
                          "pass the folder the build wrote, e.g. dist/<name>/<target>-<precision>")
    path = root / MANIFEST
    if not path.is_file():
        raise _refuse(root, f"no {MANIFEST}: not an edgepipe bundle, or an incomplete copy")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _refuse(root, f"{MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        found = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise _refuse(root, f"{MANIFEST} has schema {found!r}, this edgepipe reads {SCHEMA!r}",
                      "install the edgepipe version that built the bundle, or rebuild it")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise _refuse(root, f"{MANIFEST} lacks {', '.join(missing)}")
    if not isinstance(meta["files"], dict) or meta["model"].get("path") not in meta["files"]:
        raise _refuse(root, f"{MANIFEST} does not list its model file among its files")
    try:
        PreprocessSpec.from_dict(meta["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise _refuse(root, f"{MANIFEST} has an unreadable preprocess spec ({type(e).__name__}: {e})") from None
    return meta


def check_files(root: Path, meta: dict) -> None:
    """Every listed file present with its size and sha256; nothing unlisted besides device files."""
    listed = meta["files"]
    allowed = set(listed) | {MANIFEST} | set(meta.get("device_files", ()))
    for name, entry in listed.items():
        if not _SAFE_NAME.match(name) or name == MANIFEST:
            raise _refuse(root, f"{MANIFEST} lists {name!r}, which is not a plain file name in the bundle")
        path = root / name
        if not path.is_file():
            raise _refuse(root, f"incomplete: {name} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise _refuse(root, f"{name} has {path.stat().st_size} bytes, {MANIFEST} says {entry['bytes']} "
                                "(truncated or replaced)")
        if sha256_file(path) != entry["sha256"]:
            raise _refuse(root, f"{name} was changed after the build (sha256 differs from {MANIFEST})")
    extra = sorted(p.name for p in root.iterdir() if p.name not in allowed)
    if extra:
        raise _refuse(root, f"{', '.join(extra)} not listed in {MANIFEST}: the bundle was modified",
                      "remove what was added, or copy the bundle again from its .tar.gz release asset")


def load_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle folder; raises BundleError (one line, with the fix) if it must not run."""
    root = Path(path)
    meta = _read_manifest(root)
    check_files(root, meta)
    return Bundle(root, meta)
