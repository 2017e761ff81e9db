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

from edgepipe.core.console import console, progress
from edgepipe.core.errors import DataError
from edgepipe.core.preprocess import (
    DECODE_ERRORS,
    IMAGE_SUFFIXES,
    PreprocessSpec,
    UnreadableFile,
    decode_image,
    read_image_bytes,
)
from edgepipe.pipeline.config import DatasetConfig, SplitConfig

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
    hidden_folders: tuple[str, ...] = ()  # imagefolder: ".name" folders holding images, not read as classes


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
    file_sha256: list[str] = field(default_factory=list)  # per file, of its bytes
    root: Path | None = None  # the catalog's root: image ids are relative to it
    # labelled field images (dataset.field) are files[field_start:], ids "field/<path under field_root>"
    field_start: int | None = None
    field_root: Path | None = None

    def domain(self, i: int) -> str:
        return "field" if self.field_start is not None and i >= self.field_start else "dataset"

    def image_id(self, i: int) -> str:
        if self.domain(i) == "field":
            return "field/" + Path(os.path.relpath(self.files[i].path, self.field_root)).as_posix()
        return Path(os.path.relpath(self.files[i].path, self.root or self.files[i].path.parent)).as_posix()

    def subset(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = getattr(self.split, name)
        return self.images[idx], self.labels[idx]

    def images_of(self, name: str) -> list[dict]:
        """Each image of a split as the records name it: path relative to the dataset root, sha256
        of its bytes, class: the same image has the same id in another build of the same dataset."""
        return [{"id": self.image_id(i), "sha256": self.file_sha256[i] if self.file_sha256 else "",
                 "label": self.classes[self.labels[i]], "domain": self.domain(i)}
                for i in getattr(self.split, name)]

    def summary(self) -> dict:
        counts = {name: {c: int((self.labels[getattr(self.split, name)] == i).sum()) for i, c in enumerate(self.classes)}
                  for name in ("train", "val", "test")}
        summary = {"classes": list(self.classes), "sha256": self.dataset_sha256, "split_sha256": self.split_sha256,
                   "sizes": self.split.sizes(), "per_class": counts, "skipped": [list(s) for s in self.skipped],
                   "preprocess": self.spec.to_dict()}
        if self.field_start is not None:
            summary["field"] = {"root": str(self.field_root), "sizes": {
                name: int((getattr(self.split, name) >= self.field_start).sum()) for name in ("train", "val", "test")}}
        return summary


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
        rel, prob, kind = line.split()
        if cfg.elpv_cells in ("all", kind):
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
    hidden = tuple(p.name for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith(".")
                   and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*")))
    return Catalog(tuple(classes), tuple(files), root, hidden_folders=hidden)


def _csv_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line, path, label) per row. utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark,
    which would otherwise become part of the first column's name."""
    with path.open(newline="", encoding="utf-8-sig") as f:
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
    return rows


def _csv_catalog(cfg: DatasetConfig) -> Catalog:
    path = cfg.csv
    if not path.is_file():
        raise DataError(f"dataset.csv {path} {'is not a file' if path.exists() else 'does not exist'}",
                        "point dataset.csv at a file with path,label columns")
    root = (cfg.root or path.parent).resolve()
    try:
        rows = _csv_rows(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})",
                        "save it as UTF-8 (Excel: CSV UTF-8)") from None
    # One row per image: a repeated row is dropped (it would land in two splits); the same
    # image under two labels is an error, as there is no telling which one is right.
    first: dict[Path, tuple[int, str]] = {}
    duplicates = []
    for line_no, rel, label in rows:
        p = _inside_root(root / rel, root, cfg, f"{path}:{line_no}: {rel}")
        if not p.is_file():
            what = "is not an image file (a folder, device or pipe)" if p.exists() else f"does not exist under {root}"
            raise DataError(f"{path}:{line_no}: image {rel} {what}", "fix the path or remove the row")
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

def _cut(n: int, cfg: SplitConfig) -> tuple[int, int]:
    """Images of a class of n that go to (test, val): at least one each, and at least one left
    to train (rounding both fractions up could take all of a small class: 4 images at 0.4 / 0.4)."""
    n_test, n_val = max(1, round(n * cfg.test)), max(1, round(n * cfg.val))
    while n - n_test - n_val < 1 and max(n_test, n_val) > 1:
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_test, n_val


def stratified_split(labels: np.ndarray, cfg: SplitConfig, seed: int, groups: np.ndarray | None = None,
                     classes: tuple[str, ...] | None = None) -> Split:
    """Per class: shuffle with (seed, class) and cut test, then val, the rest is train.

    groups: items with the same group id (byte-identical files) move together, so copies never
    straddle two splits; a class is cut where its running image count first reaches the target.
    Without duplicates every group is one image and the cut is exactly the per-image one."""
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    parts = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        _, first, inverse = np.unique(groups[idx], return_index=True, return_inverse=True)
        order = np.argsort(first)  # groups in order of first appearance: singletons keep the index order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        g_of = rank[inverse]  # each image's group number, in order of first appearance
        by_group = np.argsort(g_of, kind="stable")
        members = np.split(idx[by_group], np.cumsum(np.bincount(g_of, minlength=len(order)))[:-1])
        members = [members[g] for g in np.random.default_rng([seed, int(c)]).permutation(len(members))]
        n_test, n_val = _cut(len(idx), cfg)
        cum, k = np.cumsum([len(m) for m in members]), len(members)
        # the first group at which the running count reaches each target; with three groups or
        # more, each split keeps at least one (a large group must not swallow val and train)
        test_end = int(np.searchsorted(cum, n_test)) + 1
        val_end = int(np.searchsorted(cum, n_test + n_val)) + 1
        if k >= 3:
            test_end = min(test_end, k - 2)
            val_end = min(max(val_end, test_end + 1), k - 1)
        for name, chunk in (("test", members[:test_end]), ("val", members[test_end:val_end]),
                            ("train", members[val_end:])):
            parts[name].append(np.concatenate(chunk) if chunk else np.empty(0, np.int64))
    split = Split(**{k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()})
    if cfg.fold is None:
        return split
    return _fold_of(split, labels, groups, cfg.fold.index, cfg.fold.of, seed, classes)


def _fold_of(split: Split, labels: np.ndarray, groups: np.ndarray, index: int, of: int, seed: int,
             classes: tuple[str, ...] | None) -> Split:
    """Fold `index` of `of` over train + val, stratified by class, copies kept in one fold
    (scikit-learn's StratifiedGroupKFold); the test split is the one without folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    pool = np.sort(np.concatenate([split.train, split.val]))
    distinct = {int(c): len(np.unique(groups[pool][labels[pool] == c])) for c in np.unique(labels)}
    c, fewest = min(distinct.items(), key=lambda kv: kv[1])
    if fewest < of:
        name = classes[c] if classes else str(c)
        raise DataError(f"class '{name}' has {fewest} distinct image(s) outside the test split: too few for {of} "
                        "folds (every fold validates on at least one image of every class)",
                        f"use --folds {fewest} or fewer" if fewest >= 2 else f"add images of '{name}'")
    folds = StratifiedGroupKFold(n_splits=of, shuffle=True, random_state=seed)
    train, val = list(folds.split(np.zeros(len(pool)), labels[pool], groups[pool]))[index - 1]
    return Split(np.sort(pool[train]), np.sort(pool[val]), split.test)


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
    # elpv_cells at its default is left out: a build from before the setting keeps its stage keys
    ignored = {"root", "csv", "field"} | ({"elpv_cells"} if cfg.elpv_cells == "all" else set())
    settings = {"dataset": cfg.model_dump(mode="json", exclude=ignored), "seed": seed,
                "preprocess": spec.to_dict(), "classes": cat.classes}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    _hash_files(digest, cat, files)
    if cfg.field is not None:  # left out when unset: builds from before keep their keys
        from edgepipe.pipeline.field_data import field_catalog

        field = field_catalog(cfg)
        digest.update(json.dumps({"field": cfg.field.model_dump(mode="json", exclude={"root", "csv"}),
                                  "classes": field.classes}).encode())
        _hash_files(digest, field, list(field.files))
    return digest.hexdigest()


def _hash_files(digest, cat: Catalog, files: list[LabelledFile]) -> None:
    for f in files:
        digest.update(f"{os.path.relpath(f.path, cat.root)}\0{cat.classes[f.label]}\0".encode())
        try:
            digest.update(hashlib.sha256(read_image_bytes(f.path)).digest())
        except OSError as e:  # unreadable: prepare() decides what that means; the key still differs
            digest.update(f"unreadable: {type(e).__name__}".encode())


def _why_unreadable(e: Exception, data: bytes | None) -> str:
    if data == b"":
        return "the file is empty"
    if isinstance(e, UnreadableFile):
        return str(e)
    if isinstance(e, UnidentifiedImageError):  # PIL's own text names a BytesIO object, not the file
        return "not an image in any format PIL reads"
    return f"{type(e).__name__}: {e}".splitlines()[0]


def prepare(cfg: DatasetConfig, spec: PreprocessSpec, seed: int) -> PreparedData:
    """Decode, check and split the dataset; labelled field images (dataset.field) are split on
    their own and added (pipeline/field_data.py), so the dataset's own split does not move."""
    data = prepare_catalog(cfg, *select_files(cfg, seed), spec, seed)
    if cfg.field is None:
        return data
    from edgepipe.pipeline.field_data import add_field_data

    return add_field_data(data, cfg, spec, seed)


def prepare_catalog(cfg: DatasetConfig, cat: Catalog, files: list[LabelledFile], spec: PreprocessSpec,
                    seed: int) -> PreparedData:

    if cat.duplicate_rows:
        console.print(f"[yellow]ignored {len(cat.duplicate_rows)} duplicate csv row(s) (same image, same label); "
                      f"first: {cat.duplicate_rows[0]}")
    if cat.hidden_folders:
        console.print(f"[yellow]not read as classes (hidden: the name starts with a dot): {', '.join(cat.hidden_folders)}; "
                      "rename a folder without the dot to use it as a class")

    images, kept, skipped, contents, sizes, first_of_size = [], [], [], [], Counter(), {}
    digest = hashlib.sha256()
    with progress() as bar:
        task = bar.add_task("load images", total=len(files), status="")
        for f in files:
            bar.advance(task)
            data = None
            try:
                data = read_image_bytes(f.path)
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
            first_of_size.setdefault(image.size, f.path)
            images.append(spec.to_rgb8(image))
            kept.append(f)
            contents.append(hashlib.sha256(data).digest())
    if cfg.mixed_sizes == "error" and len(sizes) > 1:
        # named once every size is counted: the odd one out is the rarest, wherever it came in the order
        (common, n_common), (odd, n_odd) = sizes.most_common(1)[0], sizes.most_common()[-1]
        raise DataError(f"images differ in size: {first_of_size[odd]} is {odd[0]}x{odd[1]} ({n_odd} image(s) of that "
                        f"size), {n_common} others are {common[0]}x{common[1]}, e.g. {first_of_size[common]}",
                        "make them one size, or set dataset.mixed_sizes: resize to resize each to the input")
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} unreadable image(s); first: {skipped[0][0]} ({skipped[0][1]})")

    keep, groups = _resolve_duplicates(cat, kept, contents, cfg)
    kept, images, contents = [kept[i] for i in keep], [images[i] for i in keep], [contents[i] for i in keep]
    for f, content in zip(kept, contents):
        digest.update(f"{os.path.relpath(f.path, cat.root)}\0{cat.classes[f.label]}\0".encode())
        digest.update(content)
    labels = np.array([f.label for f in kept], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(cat.classes))
    for c, n in zip(cat.classes, counts):
        if n < MIN_PER_CLASS:
            raise DataError(f"class '{c}' has {n} usable image(s)",
                            f"each class needs at least {MIN_PER_CLASS} (train, val and test)")
    split = stratified_split(labels, cfg.split, seed, groups[keep], cat.classes)
    _check_every_split_has_every_class(split, labels, cat.classes, groups[keep])
    split_digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        split_digest.update(name.encode() + getattr(split, name).astype(np.int64).tobytes())
    split_digest.update(digest.digest())
    return PreparedData(cat.classes, kept, np.stack(images), labels, split, spec,
                        digest.hexdigest(), split_digest.hexdigest(), skipped, [c.hex() for c in contents], cat.root)


def _resolve_duplicates(cat: Catalog, files: list[LabelledFile], contents: list[bytes],
                        cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the files to keep, a group id per file: byte-identical files share one).

    The same bytes under two labels cannot both be right: an error, or with on_duplicate: skip
    every copy is dropped. Copies within one class are kept, grouped so the split keeps them
    together (one in train and one in test would be a leak)."""
    first: dict[bytes, int] = {}
    groups = np.array([first.setdefault(c, i) for i, c in enumerate(contents)], dtype=np.int64)
    labels_of: dict[int, set[int]] = {}
    for g, f in zip(groups, files):
        labels_of.setdefault(int(g), set()).add(f.label)
    conflicts = [g for g, ls in labels_of.items() if len(ls) > 1]
    if conflicts and cfg.on_duplicate == "error":
        g = conflicts[0]
        copies = [f for f, gi in zip(files, groups) if gi == g]
        a, b = copies[0], next(f for f in copies if f.label != copies[0].label)
        raise DataError(f"{len(conflicts)} image(s) appear byte-identical under two labels, e.g. {a.path} "
                        f"('{cat.classes[a.label]}') and {b.path} ('{cat.classes[b.label]}')",
                        "delete the wrongly labelled copy, or set dataset.on_duplicate: skip to drop every such image")
    bad = set(conflicts)
    keep = np.array([i for i, g in enumerate(groups) if int(g) not in bad], dtype=np.int64)
    if conflicts:
        dropped = len(groups) - len(keep)
        console.print(f"[yellow]dropped {dropped} file(s): {len(conflicts)} image(s) stored under two labels "
                      "(dataset.on_duplicate: skip)")
    copies = len(keep) - len(np.unique(groups[keep]))
    if copies:
        console.print(f"[yellow]{copies} duplicate file(s) within a class: each set of copies stays in one split")
    return keep, groups


def _check_every_split_has_every_class(split: Split, labels: np.ndarray, classes: tuple[str, ...],
                                       groups: np.ndarray) -> None:
    for c, name in enumerate(classes):
        sizes = {part: int((labels[getattr(split, part)] == c).sum()) for part in ("train", "val", "test")}
        if min(sizes.values()) == 0:
            distinct = len(np.unique(groups[labels == c]))
            raise DataError(f"class '{name}' gets no image in {', '.join(p for p, n in sizes.items() if not n)} "
                            f"(split {sizes}, {distinct} distinct image(s)); every class needs at least one image "
                            "in each of train, val and test",
                            f"add images of '{name}' (at least {MIN_PER_CLASS} distinct ones), or lower "
                            "dataset.split.val / dataset.split.test")
