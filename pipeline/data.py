"""Dataset stage: find labelled images, decode them once, split them deterministically.

Sources: `elpv` (built-in), `imagefolder` (root/<class>/*.png|jpg) and `csv` (path,label).
The test split is held out here and only ever read by evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.config import DatasetConfig, SplitConfig
from pipeline.console import progress
from pipeline.errors import DataError
from pipeline.preprocess import DECODE_ERRORS, IMAGE_SUFFIXES, PreprocessSpec, decode_image
ELPV_CLASSES = ("functional", "defective")
MIN_PER_CLASS = 3  # one image each for train, val and test


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: int


@dataclass(frozen=True)
class Catalog:
    classes: tuple[str, ...]
    files: tuple[LabelledFile, ...]
    root: Path
    duplicate_rows: tuple[str, ...] = ()  # csv: "file:line" of rows that repeat an earlier row


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


@dataclass
class PreparedData:
    classes: tuple[str, ...]
    files: list[LabelledFile]
    images: np.ndarray  # N x S x S x 3 uint8, already resized by the preprocessing spec
    labels: np.ndarray  # N int64
    split: Split
    spec: PreprocessSpec
    dataset_sha256: str
    split_sha256: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def subset(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = getattr(self.split, name)
        return self.images[idx], self.labels[idx]

    def summary(self) -> dict:
        counts = {name: {c: int((self.labels[getattr(self.split, name)] == i).sum()) for i, c in enumerate(self.classes)}
                  for name in ("train", "val", "test")}
        return {"classes": list(self.classes), "sha256": self.dataset_sha256, "split_sha256": self.split_sha256,
                "sizes": self.split.sizes(), "per_class": counts, "skipped": [list(s) for s in self.skipped],
                "preprocess": self.spec.to_dict()}


# --- discovery -------------------------------------------------------------------------------

def _elpv_catalog(cfg: DatasetConfig) -> Catalog:
    try:
        import elpv_dataset
    except ImportError:
        raise DataError("the built-in elpv dataset is not installed", "pip install elpv-dataset") from None
    root = Path(elpv_dataset.__file__).parent / "data"
    files = []
    for line in (root / "labels.csv").read_text().splitlines():
        if not line.strip():
            continue
        rel, prob, _kind = line.split()
        files.append(LabelledFile(root / rel, int(float(prob) >= cfg.defect_threshold)))
    return Catalog(ELPV_CLASSES, tuple(files), root)


def _inside_root(p: Path, root: Path, cfg: DatasetConfig, where: str) -> Path:
    """p resolved (links followed); refused when it leaves the root, unless the config allows it."""
    resolved = p.resolve()
    if not cfg.allow_outside_root and not resolved.is_relative_to(root.resolve()):
        raise DataError(f"{where} resolves to {resolved}, outside the dataset root {root}",
                        "keep images under the dataset root, or set dataset.allow_outside_root: true if you trust it")
    return resolved


def _imagefolder_catalog(cfg: DatasetConfig) -> Catalog:
    root = cfg.root
    if not root.is_dir():
        raise DataError(f"dataset.root {root} does not exist or is not a folder",
                        "point dataset.root at a folder with one sub-folder of images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, classes = [], []
    for d in class_dirs:
        images = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                            "add images to it or remove the folder")
        for p in images:
            _inside_root(p, root, cfg, str(p))  # a link in a class folder may point anywhere
        files += [LabelledFile(p, len(classes)) for p in images]
        classes.append(d.name)
    if not classes:
        raise DataError(f"dataset.root {root} has no class sub-folders",
                        "arrange images as root/<class_name>/*.png")
    return Catalog(tuple(classes), tuple(files), root)


def _csv_catalog(cfg: DatasetConfig) -> Catalog:
    path = cfg.csv
    if not path.is_file():
        raise DataError(f"dataset.csv {path} does not exist", "point dataset.csv at a file with path,label columns")
    root = (cfg.root or path.parent).resolve()
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have a header with `path` and `label` columns",
                            "add the header line `path,label`")
        rows = []
        for r in reader:
            rel, label = (r.get("path") or "").strip(), (r.get("label") or "").strip()
            if not rel or not label:
                raise DataError(f"{path}:{reader.line_num}: the row has no path or no label",
                                "fill in both columns or remove the row")
            rows.append((reader.line_num, rel, label))
    # One row per image: a repeated row is dropped (it would land in two splits); the same
    # image under two labels is an error, as there is no telling which one is right.
    first: dict[Path, tuple[int, str]] = {}
    duplicates = []
    for line_no, rel, label in rows:
        p = _inside_root(root / rel, root, cfg, f"{path}:{line_no}: {rel}")
        if not p.is_file():
            raise DataError(f"{path}:{line_no}: image {rel} does not exist under {root}",
                            "fix the path or remove the row")
        if p in first:
            if first[p][1] != label:
                raise DataError(f"{path}:{line_no}: {rel} is labelled '{label}' here and '{first[p][1]}' "
                                f"on line {first[p][0]}", "keep one row per image, with its correct label")
            duplicates.append(f"{path.name}:{line_no}")
            continue
        first[p] = (line_no, label)
    classes = tuple(sorted({label for _, label in first.values()}))
    files = [LabelledFile(p, classes.index(label)) for p, (_, label) in first.items()]
    return Catalog(classes, tuple(files), root, tuple(duplicates))


def catalog(cfg: DatasetConfig) -> Catalog:
    cat = {"elpv": _elpv_catalog, "imagefolder": _imagefolder_catalog, "csv": _csv_catalog}[cfg.source](cfg)
    if len(cat.classes) < 2:
        raise DataError(f"the dataset has a single class ({cat.classes[0] if cat.classes else 'none'})",
                        "a classifier needs images of at least two classes")
    return cat


# --- splitting -------------------------------------------------------------------------------

def stratified_split(labels: np.ndarray, cfg: SplitConfig, seed: int) -> Split:
    """Per class: shuffle with (seed, class) and cut test, then val, the rest is train."""
    parts = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.random.default_rng([seed, int(c)]).permutation(len(idx))]
        n_test = max(1, round(len(idx) * cfg.test))
        n_val = max(1, round(len(idx) * cfg.val))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return Split(**{k: np.sort(np.concatenate(v)) for k, v in parts.items()})


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of about n items with the class proportions of `labels` (at least MIN_PER_CLASS each)."""
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(MIN_PER_CLASS, round(n * len(idx) / len(labels))))
        keep.append(np.random.default_rng([seed, 7919, int(c)]).choice(idx, k, replace=False))
    return np.sort(np.concatenate(keep))


# --- loading ---------------------------------------------------------------------------------

def select_files(cfg: DatasetConfig, seed: int) -> tuple[Catalog, list[LabelledFile]]:
    """The catalog and the files a build uses (the stratified `limit` subset, when set)."""
    cat = catalog(cfg)
    files = list(cat.files)
    if cfg.limit is not None and cfg.limit < len(files):
        files = [files[i] for i in stratified_subset(np.array([f.label for f in files]), cfg.limit, seed)]
    return cat, files


def fingerprint(cfg: DatasetConfig, spec: PreprocessSpec, seed: int) -> str:
    """Everything prepare() output depends on, hashed from file bytes without decoding an image:
    the input key of every stage that reads the data (ELPV: 0.6 s against 8 s to decode)."""
    cat, files = select_files(cfg, seed)
    settings = {"dataset": cfg.model_dump(mode="json", exclude={"root", "csv"}), "seed": seed,
                "preprocess": spec.to_dict(), "classes": cat.classes}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for f in files:
        digest.update(f"{os.path.relpath(f.path, cat.root)}\0{cat.classes[f.label]}\0".encode())
        try:
            digest.update(hashlib.sha256(f.path.read_bytes()).digest())
        except OSError as e:  # unreadable: prepare() decides what that means; the key still differs
            digest.update(f"unreadable: {type(e).__name__}".encode())
    return digest.hexdigest()


def _why_unreadable(e: Exception, data: bytes | None) -> str:
    if data == b"":
        return "the file is empty"
    if isinstance(e, UnidentifiedImageError):  # PIL's own text names a BytesIO object, not the file
        return "not an image in any format PIL reads"
    return f"{type(e).__name__}: {e}".splitlines()[0]


def prepare(cfg: DatasetConfig, spec: PreprocessSpec, seed: int) -> PreparedData:
    cat, files = select_files(cfg, seed)
    if cat.duplicate_rows:
        from pipeline.console import console
        console.print(f"[yellow]ignored {len(cat.duplicate_rows)} duplicate csv row(s) (same image, same label); "
                      f"first: {cat.duplicate_rows[0]}")

    images, kept, skipped, sizes = [], [], [], Counter()
    digest = hashlib.sha256()
    with progress() as bar:
        task = bar.add_task("load images", total=len(files), status="")
        for f in files:
            bar.advance(task)
            data = None
            try:
                data = f.path.read_bytes()
                with warnings.catch_warnings():
                    # Between 1x and 2x its pixel limit PIL only warns, then decodes gigabytes.
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    image = decode_image(data)
            except (*DECODE_ERRORS, Image.DecompressionBombWarning) as e:
                reason = _why_unreadable(e, data)
                if cfg.on_bad_image == "fail":
                    raise DataError(f"cannot read image {f.path} ({reason})",
                                    "remove or replace the file, or set dataset.on_bad_image: skip") from None
                skipped.append((str(f.path), reason))
                continue
            sizes[image.size] += 1
            if cfg.mixed_sizes == "error" and len(sizes) > 1:
                common = sizes.most_common(1)[0][0]
                odd = image.size if image.size != common else next(s for s in sizes if s != common)
                raise DataError(f"images differ in size: {f.path} is {odd[0]}x{odd[1]}, others {common[0]}x{common[1]}",
                                "make them one size, or set dataset.mixed_sizes: resize to resize each to the input")
            images.append(spec.to_rgb8(image))
            kept.append(f)
            digest.update(f"{os.path.relpath(f.path, cat.root)}\0{cat.classes[f.label]}\0".encode())
            digest.update(hashlib.sha256(data).digest())
    if skipped:
        from pipeline.console import console
        console.print(f"[yellow]skipped {len(skipped)} unreadable image(s); first: {skipped[0][0]} ({skipped[0][1]})")

    labels = np.array([f.label for f in kept], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(cat.classes))
    for c, n in zip(cat.classes, counts):
        if n < MIN_PER_CLASS:
            raise DataError(f"class '{c}' has {n} usable image(s)",
                            f"each class needs at least {MIN_PER_CLASS} (train, val and test)")
    split = stratified_split(labels, cfg.split, seed)
    split_digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        split_digest.update(name.encode() + getattr(split, name).astype(np.int64).tobytes())
    split_digest.update(digest.digest())
    return PreparedData(cat.classes, kept, np.stack(images), labels, split, spec,
                        digest.hexdigest(), split_digest.hexdigest(), skipped)
