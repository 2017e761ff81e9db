"""The one definition of input preprocessing, shared by training, export, verify and the runtime.

Uses only PIL and numpy (no torch) so a field unit reproduces training's pixels exactly.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# What PIL raises on a file that is not a readable image (truncated, garbage, too large).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# Larger files are refused before they are read: a camera frame or a scan is far below this, and
# an endless or sparse multi-GB file must not exhaust a field unit's memory (PIL's pixel limit
# only guards the decoded size, not the bytes read before decoding).
MAX_IMAGE_BYTES = 256 * 2**20


class UnreadableFile(OSError):
    """A path that is not a regular file of a sane size. str() is the reason without the path
    ("it is a folder"), for messages like f"cannot read image {path}: {e}"."""


def read_image_bytes(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image file, read only from a regular file of at most max_bytes.

    Devices (/dev/zero), FIFOs, sockets and folders are refused before open (opening a FIFO
    blocks); a file that grows past the cap while it is read is refused too."""
    path = Path(path)
    st = os.stat(path)  # FileNotFoundError / PermissionError: the caller's error message names them
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, pipe or socket)"
        raise UnreadableFile(f"it is {kind}")
    if st.st_size > max_bytes:
        raise UnreadableFile(f"it is {st.st_size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit "
                             "for one image")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFile(f"it grew past the {max_bytes / 2**20:.0f} MiB limit for one image while being read")
    return data


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> fully decoded PIL image: truncated files fail here, not later."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


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

    def standardize(self, x01, mean, std):
        """The one normalisation formula, (x - mean) / std on pixels scaled to [0, 1]: numpy here,
        torch tensors on the training device in finetune (mean / std shaped to broadcast there)."""
        return (x01 - mean) / std

    def normalize(self, rgb8: np.ndarray) -> np.ndarray:
        """NHWC (or HWC) uint8 -> NCHW float32 normalized, the network's input."""
        x = self.standardize(rgb8.astype(np.float32) / 255.0, np.asarray(self.mean, np.float32),
                             np.asarray(self.std, np.float32))
        if x.ndim == 3:
            x = x[None]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def from_array(a: np.ndarray) -> Image.Image:
    """An HxW, HxWx1, HxWx3 or HxWx4 uint8 / uint16 array -> the PIL image a file with those pixels
    decodes to, so arrays go through the same to_rgb conversion as files."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype not in (np.uint8, np.uint16) or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"pixel array of shape {a.shape} and dtype {a.dtype}: expected HxW, HxWx3 or HxWx4 "
                         "of uint8 or uint16 (float pixels are ambiguous: 0-1 or 0-255?)")
    if a.ndim == 3 and a.dtype == np.uint16:  # PIL has no 16-bit colour mode: scale as 16-bit gray is scaled
        a = np.clip(a.astype(np.float64) * (255.0 / 65535.0), 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))  # uint8: L / RGB / RGBA, uint16: I;16


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
