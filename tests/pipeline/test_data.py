import numpy as np
import pytest

from pipeline.config import DatasetConfig, SplitConfig
from pipeline.data import prepare, stratified_split
from pipeline.errors import DataError
from pipeline.preprocess import PreprocessSpec
from tests.conftest import write_image

SPEC = PreprocessSpec(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def folder_cfg(root, **kw):
    return DatasetConfig(source="imagefolder", root=root, **kw)


def test_split_is_deterministic_disjoint_complete_and_stratified():
    labels = np.array([0] * 700 + [1] * 300)
    a = stratified_split(labels, SplitConfig(val=0.15, test=0.25), seed=3)
    b = stratified_split(labels, SplitConfig(val=0.15, test=0.25), seed=3)
    c = stratified_split(labels, SplitConfig(val=0.15, test=0.25), seed=4)
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.test, c.test)
    all_idx = np.concatenate([a.train, a.val, a.test])
    assert len(all_idx) == len(set(all_idx)) == len(labels)
    assert (labels[a.test] == 1).mean() == pytest.approx(0.3, abs=0.01)
    assert len(a.test) == 250 and len(a.val) == 150


def test_elpv_labels_follow_the_defect_threshold():
    data = prepare(DatasetConfig(source="elpv", limit=80), SPEC, seed=0)
    assert data.classes == ("functional", "defective")
    assert 0.2 < data.labels.mean() < 0.45  # 821 of 2624 cells are defective at >= 0.5
    assert data.images.shape[1:] == (32, 32, 3)
    assert len(data.dataset_sha256) == 64


def test_imagefolder_prepares_and_hashes(image_folder):
    a = prepare(folder_cfg(image_folder), SPEC, seed=0)
    assert a.classes == ("cat", "dog") and len(a.labels) == 12
    assert a.dataset_sha256 == prepare(folder_cfg(image_folder), SPEC, seed=0).dataset_sha256
    write_image(image_folder / "cat" / "0.png", seed=999)  # same name, new pixels
    assert prepare(folder_cfg(image_folder), SPEC, seed=0).dataset_sha256 != a.dataset_sha256


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        prepare(folder_cfg(tmp_path / "nowhere"), SPEC, 0)


def test_empty_root_and_empty_class_folder(tmp_path, image_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        prepare(folder_cfg(tmp_path / "empty"), SPEC, 0)
    (image_folder / "bird").mkdir()
    with pytest.raises(DataError, match="bird holds no images"):
        prepare(folder_cfg(image_folder), SPEC, 0)


def test_single_class(tmp_path):
    for i in range(5):
        write_image(tmp_path / "only" / "cat" / f"{i}.png", seed=i)
    with pytest.raises(DataError, match="single class"):
        prepare(folder_cfg(tmp_path / "only"), SPEC, 0)


def test_corrupt_image_fails_by_default_and_is_skipped_on_request(image_folder):
    bad = image_folder / "dog" / "broken.png"
    bad.write_bytes((image_folder / "dog" / "0.png").read_bytes()[:60])  # truncated PNG
    (image_folder / "cat" / "notes.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"cannot read image .*(broken.png|notes.jpg).*on_bad_image: skip"):
        prepare(folder_cfg(image_folder), SPEC, 0)
    data = prepare(folder_cfg(image_folder, on_bad_image="skip"), SPEC, 0)
    assert len(data.labels) == 12
    assert {p.rsplit("/", 1)[-1] for p, _ in data.skipped} == {"broken.png", "notes.jpg"}


def test_mixed_sizes_error_names_the_file_unless_resize_is_allowed(image_folder):
    write_image(image_folder / "dog" / "big.png", size=(64, 40), seed=5)
    with pytest.raises(DataError, match=r"big.png is 64x40, others 48x48.*mixed_sizes: resize"):
        prepare(folder_cfg(image_folder), SPEC, 0)
    data = prepare(folder_cfg(image_folder, mixed_sizes="resize"), SPEC, 0)
    assert len(data.labels) == 13 and data.images.shape[1:] == (32, 32, 3)


def test_too_few_images_in_a_class(tmp_path):
    for i in range(4):
        write_image(tmp_path / "r" / "a" / f"{i}.png", seed=i)
    write_image(tmp_path / "r" / "b" / "0.png", seed=9)
    with pytest.raises(DataError, match="class 'b' has 1 usable"):
        prepare(folder_cfg(tmp_path / "r"), SPEC, 0)


def test_csv_source(tmp_path, image_folder):
    rows = ["path,label"] + [f"{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(6)]
    (image_folder / "labels.csv").write_text("\n".join(rows))
    data = prepare(DatasetConfig(source="csv", csv=image_folder / "labels.csv"), SPEC, 0)
    assert data.classes == ("cat", "dog") and len(data.labels) == 12

    (image_folder / "labels.csv").write_text("\n".join(rows + ["cat/missing.png,cat"]))
    with pytest.raises(DataError, match=r"labels.csv:14: image cat/missing.png does not exist"):
        prepare(DatasetConfig(source="csv", csv=image_folder / "labels.csv"), SPEC, 0)

    (image_folder / "labels.csv").write_text("\n".join(rows + ["../../etc/passwd,cat"]))
    with pytest.raises(DataError, match="outside the dataset root"):
        prepare(DatasetConfig(source="csv", csv=image_folder / "labels.csv"), SPEC, 0)

    (image_folder / "labels.csv").write_text("file,class\na.png,cat\n")
    with pytest.raises(DataError, match="`path` and `label` columns"):
        prepare(DatasetConfig(source="csv", csv=image_folder / "labels.csv"), SPEC, 0)
