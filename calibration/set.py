"""Selection and storage of a calibration set (numpy + PIL only)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgepipe.core.errors import DataError, MissingArtifactError
from edgepipe.core.files import atomic_output
from edgepipe.core.preprocess import PreprocessSpec


@dataclass(frozen=True)
class CalibrationSet:
    images: np.ndarray  # N x S x S x 3 uint8, resized by `spec`
    labels: np.ndarray
    indices: np.ndarray  # positions in the prepared dataset, for audit
    spec: PreprocessSpec
    path: Path
    sha256: str

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """Normalized NCHW float32 batches; a fresh iterator on every call."""
        for i in range(0, len(self.images), batch_size):
            yield self.spec.normalize(self.images[i:i + batch_size])

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches(1)


def select_balanced(labels: np.ndarray, pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices from `pool`, as equal per class as the class counts allow."""
    if size > len(pool):
        raise DataError(f"calibration.size {size} is larger than the train split ({len(pool)} images)",
                        f"set calibration.size to at most {len(pool)}")
    rng = np.random.default_rng([seed, 31337])
    per_class = {c: rng.permutation(pool[labels[pool] == c]) for c in np.unique(labels[pool])}
    chosen, take = [], {c: 0 for c in per_class}
    while sum(take.values()) < size:  # round-robin over classes that still have images
        for c, idx in per_class.items():
            if take[c] < len(idx) and sum(take.values()) < size:
                take[c] += 1
    for c, idx in per_class.items():
        chosen.append(idx[:take[c]])
    return np.sort(np.concatenate(chosen))


def create_calibration_set(images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, size: int, seed: int,
                           spec: PreprocessSpec, path: Path) -> CalibrationSet:
    idx = select_balanced(labels, train_idx, size, seed)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images[idx], labels=labels[idx], indices=idx,
                     spec=np.array(json.dumps(spec.to_dict())))
    return load_calibration_set(path)


def load_calibration_set(path: Path) -> CalibrationSet:
    if not path.is_file():
        raise MissingArtifactError(f"calibration set {path} does not exist", "rerun `edgepipe quantize`")
    raw = path.read_bytes()
    with np.load(path, allow_pickle=False) as z:
        spec = PreprocessSpec.from_dict(json.loads(str(z["spec"])))
        return CalibrationSet(z["images"], z["labels"], z["indices"], spec, path, hashlib.sha256(raw).hexdigest())
