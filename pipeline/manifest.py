"""The build manifest: what was built from what, with hashes, so a build can be audited.

Every file goes through `atomic_output` (temp path + rename), so a killed build never leaves a
partial file under its final name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from pipeline.backbones import sha256_file
from pipeline.config import BuildConfig
from pipeline.errors import MissingArtifactError

TOOLS = ("edgepipe", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxslim", "numpy", "pillow",
         "openvino", "nncf", "tensorrt")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@contextlib.contextmanager
def atomic_output(path: Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


class Manifest:
    """manifest.json in the output dir: config hash, dataset hashes, weights, tools, per-stage outputs."""

    def __init__(self, out_dir: Path, data: dict):
        self.out_dir = out_dir
        self.data = data

    @property
    def path(self) -> Path:
        return self.out_dir / "manifest.json"

    @classmethod
    def open(cls, cfg: BuildConfig) -> "Manifest":
        out = cfg.output_dir
        path = out / "manifest.json"
        data = json.loads(path.read_text()) if path.is_file() else {"stages": {}}
        data.update({"name": cfg.name, "config_sha256": cfg.sha256(), "config": cfg.model_dump(mode="json"),
                     "tool_versions": tool_versions()})
        return cls(out, data)

    def record_dataset(self, summary: dict) -> None:
        self.data["dataset"] = summary
        self.save()

    def record_stage(self, stage: str, outputs: dict[str, Path], metrics: dict, **extra) -> None:
        self.data["stages"][stage] = {
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "outputs": {k: {"path": str(p.relative_to(self.out_dir)), "sha256": sha256_file(p)} for k, p in outputs.items()},
            "metrics": metrics,
            **extra,
        }
        self.save()

    def output(self, stage: str, name: str) -> Path:
        """A recorded output of an earlier stage, checked against its recorded hash."""
        entry = self.data["stages"].get(stage, {}).get("outputs", {}).get(name)
        if entry is None:
            raise MissingArtifactError(f"no {stage} output '{name}' in {self.path}",
                                       f"run `edgepipe {stage}` (or `edgepipe build`) with this config first")
        path = self.out_dir / entry["path"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise MissingArtifactError(f"{path} is missing or changed since the {stage} stage wrote it",
                                       f"rerun `edgepipe {stage}` with this config")
        return path

    def save(self) -> None:
        write_json(self.path, self.data)
