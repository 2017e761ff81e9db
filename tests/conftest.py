"""Shared fixtures: small generated datasets and configs written to tmp dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image


def write_image(path: Path, size=(48, 48), mode="L", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """root/<class>/*.png with two classes of 6 images each."""
    root = tmp_path / "images"
    for c, cls in enumerate(("cat", "dog")):
        for i in range(6):
            write_image(root / cls / f"{i}.png", seed=c * 100 + i)
    return root


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict as YAML and return its path."""

    def _write(data: dict, name: str = "build.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return _write
