"""The device side of every backend: the Artifact record, the Runner lifecycle and the Device
(what a field unit needs to run a backend's bundle). The build side is targets/builder.py.

Runners follow Polygraphy's lifecycle: activate() acquires the backend session, infer() runs
one batch and records `inference_time`, deactivate() releases it; a runner is also a context
manager. Nothing here imports a backend: each backend's runner imports its own lazily, so a missing
backend only disables its target.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError, InputError, MissingArtifactError


class BackendUnavailable(Exception):
    """The target's backend cannot be imported here: the target is skipped, with this reason."""


@dataclass
class Artifact:
    """What a target built: files on disk plus how they came to be."""

    target: str
    precision: str
    path: Path  # the file a runner loads
    files: list[Path] = field(default_factory=list)  # everything that belongs to the artifact
    status: str = "built"  # built | skipped | failed
    reason: str | None = None  # why skipped / failed
    proxy: str | None = None  # set when `path` runs a stand-in for the real backend (e.g. TensorRT QDQ on ORT)
    parent: str | None = None  # name of the artifact this one was derived from (int8 <- fp32)
    details: dict = field(default_factory=dict)  # target-specific facts for the report (quant settings, excluded layers)

    @property
    def name(self) -> str:
        return f"{self.target}-{self.precision}" + ("-proxy" if self.proxy else "")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.files or [self.path]) if p.is_file())

    def to_dict(self, root: Path) -> dict:
        rel = lambda p: str(p.relative_to(root))  # noqa: E731
        return {"name": self.name, "target": self.target, "precision": self.precision, "path": rel(self.path),
                "files": [rel(p) for p in self.files], "status": self.status, "reason": self.reason,
                "proxy": self.proxy, "parent": self.parent, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict, root: Path) -> "Artifact":
        return cls(d["target"], d["precision"], root / d["path"], [root / p for p in d["files"]], d["status"],
                   d["reason"], d["proxy"], d["parent"], d["details"])


class Runner(ABC):
    """Polygraphy-style runner: activate / infer / deactivate, with the last inference time kept."""

    def __init__(self, name: str, threads: int):
        self.name = name
        self.threads = threads
        self.is_active = False
        self.inference_time: float | None = None  # seconds, wall clock, of the last infer()

    def activate(self) -> "Runner":
        if not self.is_active:
            try:
                self.activate_impl()
            except EdgepipeError:
                raise
            except Exception as e:  # truncated, corrupt or foreign model file; the backend says which
                cause = f"{type(e).__name__}: {e}".splitlines()[0]
                raise MissingArtifactError(f"runner {self.name} cannot load its model ({cause})",
                                           "rebuild the artifact (`edgepipe build --force quantize`)") from e
            self.is_active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Logits for one NCHW float batch. Raises InputError, with nothing run, for a batch the
        model cannot answer for; the runner stays usable for the next batch."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} must be activated before infer()")
        x = self._checked(np.asarray(x))
        start = time.perf_counter()
        out = self.infer_impl(np.ascontiguousarray(x, dtype=np.float32))
        self.inference_time = time.perf_counter() - start
        return out

    def _checked(self, x: np.ndarray) -> np.ndarray:
        """A wrong shape would fail deep inside the backend with its own wording; integer pixels and
        NaN / Inf would run and come back as a confident, wrong class (NaN logits argmax to 0).
        NaN / Inf is an error, not a flagged result: the caller learns which inputs are bad."""
        want = self.input_shape or (None, None, None, None)
        if x.ndim != len(want) or any(w is not None and w != d for w, d in zip(want, x.shape)):
            shape = "(" + ", ".join("N" if w is None else str(w) for w in want) + ")"
            raise InputError(f"runner {self.name}: input shape {tuple(x.shape)} does not match the model's {shape}",
                             f"pass float32 NCHW batches shaped {shape}: resize and normalize with the build's "
                             "preprocess spec")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"runner {self.name}: input dtype {x.dtype}, but the model takes normalized float32",
                             "normalize the pixels with the build's preprocess spec (PreprocessSpec.normalize)")
        if not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
            raise InputError(f"runner {self.name}: {len(bad)} of {len(x)} input(s) hold NaN or Inf "
                             f"(batch index {', '.join(map(str, bad[:5]))}); nothing was run",
                             "drop or repair those inputs: NaN usually comes from a broken frame or a zero std "
                             "in preprocessing")
        return x

    def infer_batched(self, x: np.ndarray, batch: int = 32) -> np.ndarray:
        """Logits for any number of inputs, in batches of at most `batch` the model accepts."""
        step = min(batch, self.max_batch or batch)
        return np.concatenate([self.infer(x[i:i + step]) for i in range(0, len(x), step)])

    def time(self, x: np.ndarray, runs: int, warmup: int = 0) -> list[float]:
        """Seconds of each of `runs` infer(x) calls after `warmup` untimed ones (active runner)."""
        for _ in range(warmup):
            self.infer(x)
        times = []
        for _ in range(runs):
            self.infer(x)
            times.append(self.inference_time)
        return times

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @property
    def max_batch(self) -> int | None:
        """Largest batch infer() accepts; None when the batch dimension is dynamic."""
        return None

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        """The model's NCHW input shape once active, None for a dynamic dimension; None if unknown
        (then infer() checks only that the input has 4 dimensions)."""
        return None

    @property
    def input_name(self) -> str | None:
        """The model's input tensor name once active (None if the backend does not name it)."""
        return None

    @property
    def input_dtype(self) -> str:
        """What infer() feeds the model: every edgepipe model takes normalized float32 NCHW
        (infer() refuses integer pixels and casts other floats)."""
        return "float32"

    def runtime_info(self) -> str | None:
        """What the backend chose at activation that changes results (e.g. compute precision)."""
        return None

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...


class Device:
    """A backend on the field unit: the package its runner imports, how to install it, and a runner
    for a bundle's model. Subclasses set `package` / `install` and write `runner`; the rest has
    defaults a backend overrides only for a quirk (TensorRT: an engine built on the device)."""

    package: str  # the Python module the runner imports
    install: str  # what to run when it is missing
    pin_version: bool = True  # bundle.json asks for the version the build verified
    device_files: tuple[str, ...] = ()  # files the device may add to a bundle after the build
    proxy: str | None = None  # label of a stand-in the build verified instead (TensorRT: its Q/DQ graph on ORT)
    builds_on_device: str | None = None  # what `edgepipe engine` builds from the bundle (TensorRT: "TensorRT engine")

    def require(self) -> None:
        """Raises ImportError (its .name: what is missing) when this backend cannot run here."""
        importlib.import_module(self.package)

    def runner(self, artifact: Artifact, threads: int) -> Runner:
        """A runner for an artifact of this backend (not yet activated)."""
        raise NotImplementedError

    def proxy_runner(self, artifact: Artifact, threads: int) -> Runner:
        raise NotImplementedError(f"{type(self).__name__} has no proxy")

    def bundle_model(self, root: Path, model: Path, name: str) -> Path:
        """The file a runner loads from a bundle folder holding `model` (TensorRT: the plan built there)."""
        return model

    def build_on_device(self, root: Path, model: Path, precision: str, **options) -> dict:
        """Compile the bundle for this device (`edgepipe engine`) when builds_on_device says what;
        returns what it recorded. ImportError when the backend is missing here."""
        raise NotImplementedError(f"{type(self).__name__} bundles run as they are")

    def runtime_requirement(self, versions: dict) -> dict:
        """bundle.json's `runtime`: the package, the version the build verified, how to install it."""
        version = versions.get(self.package) if self.pin_version else None
        pin = f"=={version}" if version else ""
        return {"package": self.package, "version": version,
                "install": f"pip install 'edgepipe[runtime]' {self.package}{pin}"}
