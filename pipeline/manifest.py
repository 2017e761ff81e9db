"""The build manifest: what was built from what, with hashes, so a build can be audited and
resumed.

Every file goes through `core.files.atomic_output` (temp path + rename), so a killed build never
leaves a partial file under its final name. Each stage entry moves running -> recorded -> complete; only a
complete entry whose input key matches and whose outputs still hash the same is up to date
(`stale_reason`), so a stage killed half-way is simply run again.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
from functools import cache
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from edgepipe.core.errors import MissingArtifactError
from edgepipe.core.files import TMP_MARK, read_json, sha256_file, write_json
from edgepipe.pipeline.config import BuildConfig
from edgepipe.targets import build_tools

# what every build runs, then each registered backend's build packages (targets/<backend>/__init__.py)
TOOLS = tuple(dict.fromkeys(("edgepipe", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxslim", "numpy",
                             "pillow") + build_tools()))


@cache
def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_versions(names=TOOLS) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    versions.update({n: v for n in names if (v := package_version(n)) is not None})
    return versions


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():  # our own leftovers cannot be in use: this build has not written yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale_temps(root: Path) -> list[Path]:
    """Delete temp files / folders that builds killed mid-write left under root; returns them."""
    removed = []
    for p in sorted(root.rglob(f".*{TMP_MARK}*")) if root.is_dir() else []:
        pid = p.name.rsplit(TMP_MARK, 1)[1]
        if not pid.isdigit() or _pid_alive(int(pid)) or not os.path.lexists(p):
            continue  # not ours, a live build's, or inside a folder removed just before
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
    return removed


class Manifest:
    """manifest.json in the output dir: config hash, dataset hashes, weights, tools, per-stage outputs."""

    def __init__(self, out_dir: Path, data: dict):
        self.out_dir = out_dir
        self.data = data
        self._hashes: dict[tuple, str] = {}

    def sha256(self, path: Path) -> str | None:
        """sha256 of a file, None if absent; cached per (path, size, mtime) for this build."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)  # atomic_output's rename: a new inode
        if key not in self._hashes:
            self._hashes[key] = sha256_file(path)
        return self._hashes[key]

    @property
    def path(self) -> Path:
        return self.out_dir / "manifest.json"

    @classmethod
    def open(cls, cfg: BuildConfig) -> "Manifest":
        out = cfg.output_dir
        path = out / "manifest.json"
        data = _read_manifest(path) if path.exists() else {"stages": {}}
        data.update({"name": cfg.name, "config_sha256": cfg.sha256(), "config": cfg.model_dump(mode="json"),
                     "tool_versions": tool_versions()})
        return cls(out, data)

    def record_dataset(self, summary: dict) -> None:
        self.data["dataset"] = summary
        self.save()

    def begin_stage(self, stage: str, key: str) -> dict | None:
        """Mark the stage running before it touches its outputs: if the build dies now, the next
        run sees an interrupted stage, never the previous run's entry over half-replaced files.
        Returns the entry it replaced, for `abandon_stage`."""
        previous = self.data["stages"].get(stage)
        self.data["stages"][stage] = {"status": "running", "key": key, "started": _now()}
        self.save()
        return previous

    def abandon_stage(self, stage: str, previous: dict | None) -> None:
        """The stage stopped on bad input. If it recorded nothing, put back the entry it replaced:
        its outputs were written atomically, so any it did replace fail their recorded hash and
        the stage reruns; a recorded entry stays (its run did not complete)."""
        if self.data["stages"].get(stage, {}).get("status") != "running":
            return
        if previous is None:
            del self.data["stages"][stage]
        else:
            self.data["stages"][stage] = previous
        self.save()

    def record_stage(self, stage: str, outputs: dict[str, Path], metrics: dict, **extra) -> None:
        """Called by a stage with what it wrote. `recorded` is not yet `complete`: the build marks
        the stage complete (with its input key) only once the stage function has returned."""
        self.data["stages"][stage] = {
            "status": "recorded",
            "finished": _now(),
            "outputs": {k: {"path": str(p.relative_to(self.out_dir)), "sha256": self.sha256(p)} for k, p in outputs.items()},
            "metrics": metrics,
            **extra,
        }
        self.save()

    def complete_stage(self, stage: str, key: str, inputs: dict[str, str]) -> None:
        entry = self.data["stages"][stage]
        if entry.get("status") == "running":  # it returned without recording: it wrote nothing
            entry.update(finished=_now(), outputs={}, metrics={})
        entry.update(status="complete", key=key, inputs=inputs)
        self.save()

    def stale_reason(self, stage: str, key: str, inputs: dict[str, str]) -> str | None:
        """None when the stage is up to date for `key`; otherwise why it must run."""
        entry = self.data["stages"].get(stage)
        if entry is None:
            return "not built yet"
        status = entry.get("status")
        if status == "running":
            return "the last run was interrupted in this stage"
        if status == "recorded":
            return "the last run did not complete this stage"
        if status != "complete" or "key" not in entry:
            return "built by an edgepipe without input keys"
        if entry["key"] != key:
            old = entry.get("inputs", {})
            changed = [k for k in sorted(set(inputs) | set(old)) if inputs.get(k) != old.get(k)]
            return "inputs changed: " + (", ".join(changed) or "key format")
        for out in entry["outputs"].values():
            if self.sha256(self.out_dir / out["path"]) != out["sha256"]:
                return f"output {out['path']} is missing or changed"
        for b in entry.get("bundles", []):  # the bundle stage writes outside the output dir
            if why := _bundle_changed(b, self.sha256):
                return f"bundle {b['path']} {why}"
        return None

    def output(self, stage: str, name: str) -> Path:
        """A recorded output of an earlier stage, checked against its recorded hash."""
        entry = self.data["stages"].get(stage, {}).get("outputs", {}).get(name)
        if entry is None:
            raise MissingArtifactError(f"no {stage} output '{name}' in {self.path}",
                                       f"run `edgepipe {stage}` (or `edgepipe build`) with this config first")
        path = self.out_dir / entry["path"]
        if self.sha256(path) != entry["sha256"]:
            raise MissingArtifactError(f"{path} is missing or changed since the {stage} stage wrote it",
                                       f"rerun `edgepipe {stage}` with this config")
        return path

    def save(self) -> None:
        write_json(self.path, self.data)

    def read_json(self, stage: str, name: str):
        """A recorded JSON output of an earlier stage, hash-checked and parsed."""
        return read_json(self.output(stage, name), f"the {stage} stage's {name}")


def float_checkpoint(manifest: Manifest) -> Path:
    """The float model every stage after this one builds on: the adapted one when the adapt stage
    recorded it, else the fine-tune's."""
    if "checkpoint" in (manifest.data["stages"].get("adapt") or {}).get("outputs", {}):
        return manifest.output("adapt", "checkpoint")
    return manifest.output("finetune", "checkpoint")


class _OutputRecord(BaseModel):
    path: str
    sha256: str | None


class _StageRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    key: str | None = None
    finished: str | None = None
    outputs: dict[str, _OutputRecord] | None = None
    inputs: dict[str, str] = {}
    bundles: list[dict] = []

    @model_validator(mode="after")
    def _finished_stages_say_what_they_wrote(self):
        if self.status in ("recorded", "complete") and (self.outputs is None or self.finished is None):
            raise ValueError(f"a {self.status} stage without its outputs or finish time")
        return self


class _ManifestRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    stages: dict[str, _StageRecord]


def _read_manifest(path: Path) -> dict:
    """manifest.json as a dict, refused in one line when it is not the shape edgepipe writes
    (a hand edit, a bad merge): the stages' bookkeeping must never be guessed."""
    fix = f"move it aside (mv {path} {path}.bad) and run `edgepipe build`: every stage reruns"
    data = read_json(path, "the build manifest", fix) if path.is_file() else None
    if data is None:
        raise MissingArtifactError(f"{path} is not a file", fix)
    try:
        _ManifestRecord.model_validate(data)
    except ValidationError as e:
        where = ".".join(str(p) for p in e.errors()[0]["loc"]) or "(top level)"
        raise MissingArtifactError(f"{path} is damaged: {where}: {e.errors()[0]['msg']}", fix) from None
    return data


def _bundle_changed(entry: dict, sha256) -> str | None:
    """Why a bundle the stage wrote no longer is what it wrote (the device's own integrity check:
    files, bundle.json's digest, the signature when it was signed), or None."""
    from edgepipe.core.errors import BundleError
    from edgepipe.runtime.bundle import SIGNATURE, load_bundle

    folder = Path(entry["path"])
    try:
        load_bundle(folder)
    except BundleError as e:
        return f"is missing or changed ({e.problem.removeprefix(f'bundle {folder}: ')})"
    if entry.get("signed_by") and not (folder / SIGNATURE).is_file():
        return f"lost its signature ({SIGNATURE})"
    if "archive" in entry and sha256(Path(entry["archive"])) != entry.get("archive_sha256"):
        return "has a missing or changed archive"
    return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
