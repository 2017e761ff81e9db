"""The bad-input corpus, generated: every case is built from code here, none is a checked-in file.

UNREADABLE: bytes no image loader can use, each with the file name it gets (the extension lies).
ODD_FORMATS: readable images in pixel formats a dataset really contains, each with the 8-bit RGB
colour it must come out as after preprocessing (every image is one flat colour, 48x48).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SIZE = (48, 48)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries four rows: a decompression bomb's header,
    without the gigabytes. A loader that trusts the header allocates width * height first."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _gray_png() -> bytes:
    return encode(Image.new("L", SIZE, 128), "PNG")


def _jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


UNREADABLE = {
    "zero-bytes.png": lambda: b"",
    "truncated.png": lambda: _gray_png()[:60],
    "truncated.jpg": lambda: _jpeg()[: len(_jpeg()) // 2],
    "text.jpg": lambda: b"These are my notes, not an image.\n",
    "zip.png": lambda: b"PK\x03\x04" + bytes(64),
    "png-bytes-as.tif": lambda: b"II*\x00" + _gray_png(),  # a TIFF signature in front of other data
    "bomb-30000x30000.png": lambda: png_header_only(30000, 30000),  # > 2x PIL's pixel limit: refused by PIL
    "bomb-10000x10000.png": lambda: png_header_only(10000, 10000),  # 1x-2x: PIL only warns; edgepipe refuses
}


def _palette(transparent: bool) -> bytes:
    image = Image.new("P", SIZE, 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return encode(image, "PNG", **({"transparency": 1} if transparent else {}))


# name -> (bytes, expected RGB after preprocessing, per-channel tolerance)
ODD_FORMATS = {
    "cmyk.jpg": (lambda: encode(Image.new("CMYK", SIZE, (0, 255, 0, 0)), "JPEG", quality=95), (255, 0, 255), 3),
    "cmyk.tif": (lambda: encode(Image.new("CMYK", SIZE, (0, 0, 255, 0)), "TIFF"), (255, 255, 0), 0),
    "rgba-half-transparent.png": (lambda: encode(Image.new("RGBA", SIZE, (200, 100, 50, 128)), "PNG"), (100, 50, 25), 1),
    "gray16.png": (lambda: encode(Image.fromarray(np.full(SIZE, 40000, np.uint16)), "PNG"), (156, 156, 156), 0),
    "gray16.tif": (lambda: encode(Image.fromarray(np.full(SIZE, 65535, np.uint16)), "TIFF"), (255, 255, 255), 0),
    "palette.png": (lambda: _palette(transparent=False), (10, 200, 30), 0),
    "palette-transparent.png": (lambda: _palette(transparent=True), (0, 0, 0), 0),
    "gray-alpha.png": (lambda: encode(Image.new("LA", SIZE, (200, 255)), "PNG"), (200, 200, 200), 0),
    "bilevel.png": (lambda: encode(Image.new("1", SIZE, 1), "PNG"), (255, 255, 255), 0),
}
