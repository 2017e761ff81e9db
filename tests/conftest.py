"""Shared fixtures: small generated datasets, configs written to tmp dirs, and a tiny trained
model with confident answers (so int8 agreement is meaningful in tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from edgepipe.calibration import create_calibration_set
from edgepipe.core.preprocess import PreprocessSpec
from edgepipe.pipeline.export import export_onnx

# No test downloads weights: a backbone without local weights must fail as it does offline.
# tests/pipeline/test_backbones.py lifts this to test the download path against a fake hub.
os.environ["HF_HUB_OFFLINE"] = "1"


def write_image(path: Path, size=(48, 48), mode="L", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def write_stripes(root: Path, per_class: int = 30, size: int = 64, contrast: int = 180, noise: float = 12,
                  seed: int = 0) -> Path:
    """Horizontal vs vertical stripes of random phase and width: ImageNet features separate these
    (less well at a low contrast under much noise)."""
    rng = np.random.default_rng(seed)
    for cls in ("horizontal", "vertical"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            period, phase = rng.integers(6, 12), rng.integers(0, 12)
            wave = ((np.arange(size) + phase) // (period // 2)) % 2 * contrast + 120 - contrast // 2
            img = np.tile(wave[:, None] if cls == "horizontal" else wave[None, :], (1, size) if cls == "horizontal" else (size, 1))
            img = np.clip(img + rng.normal(0, noise, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(img, "L").save(root / cls / f"{i}.png")
    return root


# A whole build in seconds: lite0 at 32 px, head-only training, ONNX Runtime fp32 + int8, lenient gates.
TINY_BUILD = {
    "name": "tiny", "output_dir": "out",
    "dataset": {"source": "imagefolder", "root": "data", "split": {"val": 0.25, "test": 0.25}},
    "model": {"image_size": 32},
    "finetune": {"warmup_epochs": 3, "epochs": 0},
    "export": {"parity": {"images": 4}},
    "calibration": {"size": 8},
    "fallback": {"enabled": False},
    "targets": [{"name": "onnxruntime"}],
    "verify": {"runs": 5, "warmup": 1, "throughput_batch": 4},
    "gates": {"max_accuracy_drop": 1.0, "min_agreement": 0.0},
}


def write_tiny_project(root: Path, **changes) -> Path:
    """root/data (24 stripe images, 32 px) and root/build.yaml (TINY_BUILD with changes); returns the config."""
    if not (root / "data").exists():
        write_stripes(root / "data", per_class=12, size=32)
    cfg = root / "build.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_BUILD, **changes}))
    return cfg


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


TINY_SPEC = PreprocessSpec(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark images with a bright blob on the left (class 0) or on the right (class 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for img, y in zip(images, labels):
        r, c = rng.integers(6, 26), (rng.integers(4, 12) if y == 0 else rng.integers(20, 28))
        img[r - 4:r + 4, c - 4:c + 4] = 230
    return images, labels


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d((1, 2)), torch.nn.Flatten())
        self.head = torch.nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    images, labels = _images(256, seed=1)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.from_numpy(TINY_SPEC.normalize(images)), torch.from_numpy(labels)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    root = tmp_path_factory.mktemp("tiny")
    onnx_path = export_onnx(model, root / "model.onnx", 32, opset=18, dynamic_batch=True, simplify=True)
    calib = create_calibration_set(images, labels, np.arange(len(labels)), 64, 0, TINY_SPEC, root / "calib.npz")
    test_images, test_labels = _images(64, seed=2)
    test_x = TINY_SPEC.normalize(test_images)
    with torch.no_grad():
        reference = model(torch.from_numpy(test_x)).numpy()
    assert (reference.argmax(1) == test_labels).mean() > 0.9, "the tiny model must be confident for these tests"
    return {"model": model, "onnx": onnx_path, "calib": calib, "x": test_x, "reference": reference, "root": root}


from tests.tiny_build import bundle_copy, tiny_build  # noqa: E402,F401  (fixtures: a bundled tiny build)
