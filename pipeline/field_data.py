"""Labelled field images added to a build's dataset (`dataset.field`, `edgepipe update --data`).

They are decoded and checked like the dataset's own images and split into train / val / test on
their own, with the same fractions and seed; then appended. The dataset's own split therefore stays
exactly what it was, so the previous release's test images are this build's "dataset" test images
and its field test images are new: the report measures both (rehearsal: the old data is trained on
again, so the model does not forget it).
"""

from __future__ import annotations

import hashlib

import numpy as np

from edgepipe.core.errors import DataError
from edgepipe.core.preprocess import PreprocessSpec
from edgepipe.pipeline.config import DatasetConfig
from edgepipe.pipeline.data import (
    Catalog,
    LabelledFile,
    PreparedData,
    Split,
    _csv_catalog,
    _imagefolder_catalog,
    prepare_catalog,
)


def _field_dataset(cfg: DatasetConfig) -> DatasetConfig:
    f = cfg.field
    return cfg.model_copy(update={"source": f.source, "root": f.root, "csv": f.csv, "limit": None,
                                  "elpv_cells": "all", "field": None})


def field_catalog(cfg: DatasetConfig) -> Catalog:
    """The field images, catalogued as a dataset of their own. One class is enough here: the
    labels are the dataset's (a field unit may only ever see defective panels)."""
    fcfg = _field_dataset(cfg)
    try:
        return (_imagefolder_catalog if fcfg.source == "imagefolder" else _csv_catalog)(fcfg)
    except DataError as e:
        raise DataError(f"dataset.field: {e.problem}", e.fix) from None


def add_field_data(data: PreparedData, cfg: DatasetConfig, spec: PreprocessSpec, seed: int) -> PreparedData:
    cat = field_catalog(cfg)
    unknown = [c for c in cat.classes if c not in data.classes]
    if unknown:
        raise DataError(f"the field data has class(es) {', '.join(repr(c) for c in unknown)} that the dataset "
                        f"does not ({', '.join(data.classes)})",
                        "name each field folder (or csv label) after one of the dataset's classes; a new class "
                        "needs a new build, not an update")
    try:
        field = prepare_catalog(_field_dataset(cfg), cat, list(cat.files), spec, seed)
    except DataError as e:  # e.g. too few images of a class to split: say which images
        raise DataError(f"dataset.field ({cfg.field.root or cfg.field.csv}): {e.problem}", e.fix) from None
    to_main = np.array([data.classes.index(c) for c in field.classes], dtype=np.int64)
    n = len(data.files)
    both = {p.resolve() for p in (f.path for f in data.files)} & {f.path.resolve() for f in field.files}
    if both:
        raise DataError(f"{len(both)} field image(s) are also in the dataset, e.g. {sorted(both)[0]}",
                        "field data must be new images: remove them from the field folder")
    shared = set(data.file_sha256) & set(field.file_sha256)
    if shared:
        i = field.file_sha256.index(sorted(shared)[0])
        raise DataError(f"{len(shared)} field image(s) are byte-identical to dataset images, e.g. {field.files[i].path}",
                        "field data must be new images: remove the copies from the field folder")
    split = Split(*(np.concatenate([getattr(data.split, k), getattr(field.split, k) + n])
                    for k in ("train", "val", "test")))
    files = data.files + [LabelledFile(f.path, int(to_main[f.label])) for f in field.files]
    digest = lambda a, b: hashlib.sha256(f"{a}\0field\0{b}".encode()).hexdigest()  # noqa: E731
    return PreparedData(data.classes, files, np.concatenate([data.images, field.images]),
                        np.concatenate([data.labels, to_main[field.labels]]), split, spec,
                        digest(data.dataset_sha256, field.dataset_sha256), digest(data.split_sha256, field.split_sha256),
                        data.skipped + field.skipped, data.file_sha256 + field.file_sha256, data.root,
                        field_start=n, field_root=cat.root)
