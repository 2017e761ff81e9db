"""The one definition of input preprocessing, shared by training, export, verify and the runtime.

Uses only PIL and numpy (no torch) so a field unit reproduces training's pixels exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PreprocessSpec:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # PIL's BILINEAR resize widens its filter when downscaling, i.e. it is antialiased.
    resize: str = "bilinear-antialias"
    layout: str = "NCHW"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize=d.get("resize", "bilinear-antialias"), layout=d.get("layout", "NCHW"))

    def to_rgb8(self, image: Image.Image) -> np.ndarray:
        """Any PIL image -> HxWx3 uint8 at the model's input size."""
        rgb = to_rgb(image)
        if rgb.size != (self.image_size, self.image_size):
            rgb = rgb.resize((self.image_size, self.image_size), Image.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)

    def normalize(self, rgb8: np.ndarray) -> np.ndarray:
        """NHWC (or HWC) uint8 -> NCHW float32 normalized, the network's input."""
        x = rgb8.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if x.ndim == 3:
            x = x[None]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB: grayscale is replicated, 16-bit is scaled, alpha is dropped onto black."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 255.0
        image = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")
