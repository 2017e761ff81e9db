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


# -------------------------------------------------------------------------------------------------
# Hostile paths for `edgepipe predict` / `check` (inputs) and `predict --jsonl` (outputs).
#
# HOSTILE_PREDICT_INPUTS: name -> (make, fragment). make(folder) creates the input in folder (or
# names a system path) and returns the path to pass. None is a readable image file of a sane size:
# each must give one error line whose text holds `fragment`, at once (never block, never read
# gigabytes), while the other inputs are predicted.
# HOSTILE_OUTPUTS: name -> (make, fragment). make(folder, image) returns the --jsonl path, given an
# input image that lies in folder/in/. Each must end the run with one "error:" line holding
# `fragment`, exit 2, and leave an existing file's bytes as they were.
# -------------------------------------------------------------------------------------------------
import os  # noqa: E402
from pathlib import Path  # noqa: E402

OVERSIZED = 300 * 2**20  # over edgepipe.core.preprocess.MAX_IMAGE_BYTES (256 MiB)


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "fifo.png")  # opening it would block until a writer comes
    return folder / "fifo.png"


def _sparse(folder: Path) -> Path:
    path = folder / "sparse-300MiB.png"
    with open(path, "wb") as f:  # a PNG signature, then 300 MiB of holes: no disk used
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(OVERSIZED)
    return path


def _folder_as_file(folder: Path) -> Path:
    (folder / "folder.png").mkdir()
    return folder / "folder.png"


def _link_to_dev_zero(folder: Path) -> Path:
    (folder / "zero-link.png").symlink_to("/dev/zero")
    return folder / "zero-link.png"


HOSTILE_PREDICT_INPUTS = {
    "fifo": (_fifo, "not a regular file"),
    "dev-zero": (lambda folder: Path("/dev/zero"), "not a regular file"),  # endless
    "symlink-to-dev-zero": (_link_to_dev_zero, "not a regular file"),
    "sparse-oversized": (_sparse, "over the 256 MiB limit"),
    "folder-as-file": (_folder_as_file, "is a folder"),
}


def _hardlink(folder: Path, image: Path) -> Path:
    os.link(image, folder / "hardlink.jsonl")
    return folder / "hardlink.jsonl"


def _symlink(folder: Path, image: Path) -> Path:
    (folder / "symlink.jsonl").symlink_to(image)
    return folder / "symlink.jsonl"


def _existing(name: str, data: bytes):
    def make(folder: Path, image: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return make


def _image_bytes(fmt: str) -> bytes:
    return encode(Image.new("RGB", SIZE, (10, 20, 30)), fmt)


def _under_a_file(folder: Path, image: Path) -> Path:
    (folder / "a-file").write_text("a file, not a folder")
    return folder / "a-file" / "out.jsonl"


HOSTILE_OUTPUTS = {
    "output-equals-input": (lambda folder, image: image, "is one of the input images"),
    "output-hardlink-to-input": (_hardlink, "is one of the input images"),
    "output-symlink-to-input": (_symlink, "is one of the input images"),
    "output-is-image": (_existing("other.png", _image_bytes("PNG")), "is an existing .png image file"),
    "output-is-image-uppercase-suffix": (_existing("OTHER.JPG", _image_bytes("JPEG")), "is an existing .jpg image"),
    **{f"output-holds-{fmt.lower()}-bytes": (_existing(f"old-{fmt.lower()}.out", _image_bytes(fmt)),
                                              f"holds a {name} image")
       for fmt, name in [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"),
                         ("WEBP", "WebP")]},
    "jsonl-in-missing-folder": (lambda folder, image: folder / "missing" / "out.jsonl", "no such file or directory"),
    "jsonl-under-a-file": (_under_a_file, "not a directory"),
    "dev-full": (lambda folder, image: Path("/dev/full"), "no space left on device"),
}


# --- damaged build metadata (issue 12) ---------------------------------------------------------
# manifest.json as a hand edit, a bad merge or a half-synced copy leaves it: each maps the real
# file's bytes to the damaged ones. The build must refuse each in one line, naming the file.
def _json_edit(edit):
    def damage(raw: bytes) -> bytes:
        import json

        data = json.loads(raw)
        edit(data)
        return json.dumps(data).encode()

    return damage


DAMAGED_MANIFESTS = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "binary": lambda raw: b"\xff\xfe\x00\x01" * 8,
    "merge-conflict": lambda raw: b"<<<<<<< HEAD\n" + raw + b"=======\n{}\n>>>>>>> theirs\n",
    "a-list": lambda raw: b"[]",
    "stages-a-list": _json_edit(lambda d: d.update(stages=[])),
    "stage-without-status": _json_edit(lambda d: d["stages"]["finetune"].pop("status")),
    "outputs-a-string": _json_edit(lambda d: d["stages"]["export"].update(outputs="model.onnx")),
    "output-without-path": _json_edit(lambda d: d["stages"]["export"]["outputs"]["onnx"].pop("path")),
    "complete-stage-without-outputs": _json_edit(lambda d: d["stages"]["quantize"].pop("outputs")),
    "a-5000-digit-number": lambda raw: raw[:-2] + b', "n": ' + b"9" * 5000 + b"}\n",  # int() refuses it
    "nested-too-deeply": lambda raw: b"[" * 100_000 + b"]" * 100_000,
}


# --- hostile configs (issue 12) -------------------------------------------------------------------
# YAML text -> a fragment of the one-line error load_config must give (before any image is read).
HOSTILE_CONFIGS = {
    "repeated-section": ("name: x\ngates:\n  max_accuracy_drop: 0.001\nseed: 1\ngates:\n  min_agreement: 0.5\n",
                         "key 'gates' appears twice in one section (lines 2 and 5)"),
    "repeated-nested-key": ("name: x\nfinetune:\n  epochs: 3\n  epochs: 30\n", "key 'epochs' appears twice"),
    "repeated-key-flow-style": ("name: x\nfinetune: {augment: {flips: false, flips: true}}\n",
                                "key 'flips' appears twice"),
    "repeated-name": ("name: a\nname: b\n", "key 'name' appears twice"),
    "nan-gate": ("name: x\ngates: {max_accuracy_drop: .nan}\n", "gates.max_accuracy_drop: Input should be a finite number"),
    "inf-learning-rate": ("name: x\nfinetune: {head_lr: .inf}\n", "finetune.head_lr: Input should be a finite number"),
    "negative-seed": ("name: x\nseed: -1\n", "seed: Input should be greater than or equal to 0"),
    "huge-seed": ("name: x\nseed: 99999999999\n", "seed: Input should be less than 4294967296"),
    "no-targets": ("name: x\ntargets: []\n", "targets: List should have at least 1 item"),
    "repeated-precision": ("name: x\ntargets: [{name: onnxruntime, precisions: [int8, int8]}]\n",
                           "each precision may appear once"),
    "huge-throughput-batch": ("name: x\nverify: {throughput_batch: 1000000}\n",
                              "verify.throughput_batch: Input should be less than or equal to 1024"),
    "output-inside-dataset": ("name: x\noutput_dir: imgs/build\ndataset: {source: imagefolder, root: imgs}\n",
                              "output_dir"),
    "output-is-dataset": ("name: x\noutput_dir: imgs\ndataset: {source: imagefolder, root: imgs}\n",
                          "is inside dataset.root"),
    "bundles-inside-dataset": ("name: x\ndataset: {source: imagefolder, root: imgs}\nbundle: {dist_dir: imgs/dist}\n",
                               "bundle.dist_dir"),
    "bundle-folder-is-dataset": ("name: imgs\ndataset: {source: imagefolder, root: imgs}\nbundle: {dist_dir: .}\n",
                                 "holds the dataset root"),
    "bundle-folder-holds-csv-images": ("name: imgs\ndataset: {source: csv, csv: imgs/labels.csv}\nbundle: {dist_dir: .}\n",
                                       "holds the dataset root"),
    "name-too-long-for-a-file-name": ("name: " + "n" * 300 + "\n", "name: String should have at most 100 characters"),
}


# --- hostile datasets (issue 12) ------------------------------------------------------------------
# Each turns a clean imagefolder (root/cat, root/dog: 6 distinct images each) into a dataset that
# would once have built and passed every gate on wrong data; -> a fragment of the DataError.
def _copy(src: str, dst: str):
    def make(root):
        import shutil

        shutil.copyfile(root / src, root / dst)

    return make


def _oversized(name: str):
    def make(root):
        with open(root / name, "wb") as f:  # sparse: 300 MiB declared, no disk used
            f.truncate(300 * 2**20)

    return make


HOSTILE_DATASETS = {
    "same-image-two-labels": (_copy("cat/0.png", "dog/also-a-cat.png"), "byte-identical under two labels"),
    "same-image-two-labels-renamed": (_copy("dog/5.png", "cat/IMG_0001.PNG"), "byte-identical under two labels"),
    "oversized-sparse-file": (_oversized("dog/huge.png"), "over the 256 MiB limit"),
}


# --- damaged or hand-edited bundle.json (bundle metadata validation) ------------------------------
# name -> (damage, fragment). damage(meta) edits a copy of a real bundle.json dict in place and may
# return a replacement (e.g. a non-object). Loading it must give one BundleError line (exit 2)
# that holds `fragment` (the key), never a traceback, whether or not the integrity digest was
# recomputed after the edit.
def _set(path: str, value):
    """meta -> set the value at a dotted path ('files.*' = every file entry)."""
    def edit(meta):
        *parents, last = path.split(".")
        targets = [meta]
        for part in parents:
            targets = [v for t in targets for v in (t.values() if part == "*" else [t[part]])]
        for t in targets:
            if last == "*":
                for k in list(t):
                    t[k] = value
            elif value is _DELETE:
                t.pop(last, None)  # idempotent: a test may apply a damage twice
            else:
                t[last] = value
    return edit


_DELETE = object()

DAMAGED_BUNDLE_META = {
    "labels-a-string": (_set("labels", "abc"), "key labels: Input should be a valid list"),
    "labels-empty": (_set("labels", []), "key labels: List should have at least 1 item"),
    "labels-repeated": (_set("labels", ["left", "left"]), "labels: repeats 'left'"),
    "label-a-number": (_set("labels", ["left", 2]), "key labels[1]"),
    "files-a-list": (_set("files", []), "key files: Input should be a valid dictionary"),
    "files-empty": (_set("files", {}), "key files: Dictionary should have at least 1 item"),
    "file-without-sha256": (_set("files.*.sha256", _DELETE), "lacks key files['model.onnx'].sha256"),
    "file-sha256-short": (_set("files.*.sha256", "abc123"), "key files['model.onnx'].sha256"),
    "file-bytes-a-string": (_set("files.*.bytes", "x"), "key files['model.onnx'].bytes"),
    "file-bytes-negative": (_set("files.*.bytes", -1), "key files['model.onnx'].bytes"),
    "file-entry-a-string": (_set("files.*", "deadbeef"), "key files['model.onnx']"),
    "model-path-unlisted": (_set("model.path", "other.onnx"), "model.path 'other.onnx' is not one of the files"),
    "input-missing": (_set("input", _DELETE), "lacks key input"),
    "input-shape-a-string": (_set("input.shape", "1x3x32x32"), "key input.shape"),
    "preprocess-a-list": (_set("preprocess", [224]), "key preprocess"),
    "preprocess-size-a-string": (_set("preprocess.image_size", "32"), "key preprocess.image_size"),
    "preprocess-mean-nan": (_set("preprocess.mean", [float("nan"), 0.5, 0.5]), "preprocess.mean[0] is nan"),
    "preprocess-std-zero": (_set("preprocess.std", [0.5, 0.0, 0.5]), "key preprocess.std[1]"),
    "preprocess-std-two-values": (_set("preprocess.std", [0.5, 0.5]), "key preprocess.std"),
    "preprocess-layout-nhwc": (_set("preprocess.layout", "NHWC"), "key preprocess.layout"),
    "verified-a-number": (_set("verified", 5), "key verified"),
    "verified-how-unknown": (_set("verified.how", "trust-me"), "key verified.how"),
    "verified-threads-zero": (_set("verified.method.threads", 0), "key verified.method.threads"),
    "accuracy-infinite": (_set("verified.accuracy", float("inf")), "verified.accuracy is inf"),
    "gates-passed-a-string": (_set("gates.passed", "yes"), "key gates.passed"),
    "device-file-outside": (_set("device_files", ["../model.plan"]), "key device_files"),
    "integrity-missing": (_set("integrity", _DELETE), "lacks key integrity"),
    "name-null": (_set("name", None), "key name"),
    "not-an-object": (lambda meta: [meta], "bundle.json is damaged: it holds a JSON list, not an object"),
}
