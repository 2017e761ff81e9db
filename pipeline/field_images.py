"""The unlabelled field images of an `adapt` section (`--adapt DIR`): which files, their content
digest (the adapt stage's key) and the seeded selection the adapt stage adapts to, which the
reference stage reads again for the bundle's field reference. numpy and PIL; no torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgepipe.core.errors import DataError
from edgepipe.core.preprocess import DECODE_ERRORS, IMAGE_SUFFIXES, PreprocessSpec, decode_image, read_image_bytes
from edgepipe.pipeline.config import ADDED_LATER, AdaptConfig


def field_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"adapt.images {folder} does not exist or is not a folder",
                        "point --adapt (adapt.images) at a folder of unlabelled field images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def images_digest(acfg: AdaptConfig) -> dict:
    """What the stage's output depends on: the images by content (a renamed folder is no change)."""
    h = hashlib.sha256()
    files = field_images(acfg.images) if acfg.images.is_dir() else []
    for p in files:
        h.update(p.relative_to(acfg.images).as_posix().encode() + b"\0")
        try:
            h.update(hashlib.sha256(read_image_bytes(p)).digest())
        except OSError as e:  # unreadable: the stage says so when it runs; the key still differs
            h.update(f"unreadable: {type(e).__name__}".encode())
    key = {"images": h.hexdigest(), "count": len(files), "limit": acfg.limit}
    if acfg.strength != ADDED_LATER["adapt", "strength"]:  # the default left out: builds from before keep their keys
        key["strength"] = acfg.strength
    return key


def _load(files: list[Path], spec: PreprocessSpec, limit: int, seed: int, on_bad_image: str) -> tuple[np.ndarray, list]:
    if len(files) > limit:
        files = [files[i] for i in np.sort(np.random.default_rng([seed, 4099]).choice(len(files), limit, replace=False))]
    images, skipped = [], []
    for p in files:
        try:
            images.append(spec.to_rgb8(decode_image(read_image_bytes(p))))
        except DECODE_ERRORS as e:
            if on_bad_image == "fail":
                raise DataError(f"cannot read field image {p} ({type(e).__name__})",
                                "remove or replace the file, or set dataset.on_bad_image: skip") from None
            skipped.append(str(p))
    return (np.stack(images) if images else np.zeros((0, spec.image_size, spec.image_size, 3), np.uint8)), skipped


def load_field_images(acfg: AdaptConfig, spec: PreprocessSpec, seed: int, on_bad_image: str) -> tuple[np.ndarray, list, int]:
    """The field images the adapt stage adapts to (at most acfg.limit, a seeded draw), resized by
    spec: (N x S x S x 3 uint8, the paths skipped as unreadable, files found). The reference stage
    reads the same ones, for the bundle's field reference."""
    files = field_images(acfg.images)
    images, skipped = _load(files, spec, acfg.limit, seed, on_bad_image)
    return images, skipped, len(files)
