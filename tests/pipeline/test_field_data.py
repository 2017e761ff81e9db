"""Labelled field images added to a dataset (pipeline/field_data.py): the dataset's own split stays put."""

import shutil

import numpy as np
import pytest

from edgepipe.core.errors import DataError
from edgepipe.pipeline.config import DatasetConfig, FieldDataConfig
from edgepipe.pipeline.data import fingerprint, prepare
from tests.conftest import TINY_SPEC, write_image, write_stripes


@pytest.fixture
def folders(tmp_path):
    data = write_stripes(tmp_path / "data", per_class=12, size=32)
    field = tmp_path / "field"
    for c, cls in enumerate(("horizontal", "vertical")):
        for i in range(8):
            write_image(field / cls / f"f{i}.png", size=(32, 32), seed=1000 + 100 * c + i)
    return data, field


def _cfg(data, field=None, **kw) -> DatasetConfig:
    return DatasetConfig(source="imagefolder", root=data, split={"val": 0.25, "test": 0.25},
                         field=None if field is None else FieldDataConfig(root=field, **kw))


def test_the_dataset_split_is_the_same_with_field_data(folders):
    data, field = folders
    alone, both = prepare(_cfg(data), TINY_SPEC, 0), prepare(_cfg(data, field), TINY_SPEC, 0)
    n = len(alone.files)
    assert both.field_start == n and len(both.files) == n + 16
    for name in ("train", "val", "test"):
        mine = getattr(both.split, name)
        assert np.array_equal(mine[mine < n], getattr(alone.split, name))  # the dataset part, unchanged
        assert (mine >= n).sum() > 0  # the field images were split too
    test = both.images_of("test")
    assert [t for t in test if t["domain"] == "dataset"] == alone.images_of("test")
    field_ids = [t["id"] for t in test if t["domain"] == "field"]
    assert field_ids and all(i.startswith("field/") for i in field_ids)
    assert both.summary()["field"]["sizes"]["test"] == len(field_ids)


def test_field_data_changes_the_fingerprint_and_only_then(folders):
    data, field = folders
    assert fingerprint(_cfg(data), TINY_SPEC, 0) != fingerprint(_cfg(data, field), TINY_SPEC, 0)
    moved = field.with_name("moved")
    shutil.copytree(field, moved)
    assert fingerprint(_cfg(data, field), TINY_SPEC, 0) == fingerprint(_cfg(data, moved), TINY_SPEC, 0)
    write_image(moved / "vertical" / "f0.png", size=(32, 32), seed=7)  # new bytes, same name
    assert fingerprint(_cfg(data, field), TINY_SPEC, 0) != fingerprint(_cfg(data, moved), TINY_SPEC, 0)


def test_one_class_of_field_images_is_enough(folders):
    data, field = folders
    shutil.rmtree(field / "vertical")
    both = prepare(_cfg(data, field), TINY_SPEC, 0)
    assert {both.classes[both.labels[i]] for i in range(both.field_start, len(both.files))} == {"horizontal"}


def test_a_class_the_dataset_does_not_have_is_refused(folders):
    data, field = folders
    (field / "vertical").rename(field / "diagonal")
    with pytest.raises(DataError, match="'diagonal' that the dataset does not") as e:
        prepare(_cfg(data, field), TINY_SPEC, 0)
    assert "new build, not an update" in e.value.fix


def test_copies_of_dataset_images_are_refused(folders):
    data, field = folders
    shutil.copy(data / "vertical" / "3.png", field / "vertical" / "copy.png")
    with pytest.raises(DataError, match="byte-identical to dataset images"):
        prepare(_cfg(data, field), TINY_SPEC, 0)


def test_too_few_field_images_of_a_class_name_the_field_folder(folders):
    data, field = folders
    for p in sorted((field / "vertical").iterdir())[2:]:
        p.unlink()
    with pytest.raises(DataError, match=r"dataset.field \(.*field\): class 'vertical' has 2 usable"):
        prepare(_cfg(data, field), TINY_SPEC, 0)
