import numpy as np
import pytest

from edgepipe.calibration import create_calibration_set, load_calibration_set
from edgepipe.calibration.nncf_dataset import nncf_dataset
from edgepipe.calibration.ort_reader import OrtCalibrationReader
from edgepipe.calibration.set import select_balanced
from edgepipe.core.errors import DataError
from edgepipe.core.preprocess import PreprocessSpec

SPEC = PreprocessSpec(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture
def pool():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    images = rng.integers(0, 256, (100, 8, 8, 3), dtype=np.uint8)
    train = np.arange(0, 100, 1)[np.r_[0:60, 80:92, 95:99]]  # 60 / 12 / 4 per class
    return images, labels, train


def test_selection_is_class_balanced_within_train_only(pool):
    _, labels, train = pool
    idx = select_balanced(labels, train, 30, seed=0)
    assert set(idx) <= set(train) and len(set(idx)) == 30
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [14, 12, 4]  # equal shares, then the classes that still have images
    assert np.array_equal(idx, select_balanced(labels, train, 30, seed=0))


def test_larger_than_train_split_is_refused(pool):
    _, labels, train = pool
    with pytest.raises(DataError, match=r"calibration.size 77 is larger than the train split \(76 images\)"):
        select_balanced(labels, train, 77, seed=0)


def test_stored_set_round_trips_with_stable_hash(pool, tmp_path):
    images, labels, train = pool
    a = create_calibration_set(images, labels, train, 20, 0, SPEC, tmp_path / "a" / "calib.npz")
    b = create_calibration_set(images, labels, train, 20, 0, SPEC, tmp_path / "b" / "calib.npz")
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    again = load_calibration_set(a.path)
    assert again.spec == SPEC and np.array_equal(again.images, images[a.indices])


def test_every_adapter_is_re_iterable(pool, tmp_path):
    images, labels, train = pool
    calib = create_calibration_set(images, labels, train, 10, 0, SPEC, tmp_path / "calib.npz")
    first, second = list(calib), list(calib)
    assert len(first) == 10 and all(np.array_equal(x, y) for x, y in zip(first, second))
    assert first[0].shape == (1, 3, 8, 8) and first[0].dtype == np.float32

    reader = OrtCalibrationReader(calib, "input", batch_size=4)
    def drain():
        out = []
        while (item := reader.get_next()) is not None:
            out.append(item["input"])
        return out
    pass1 = drain()
    reader.rewind()
    pass2 = drain()
    assert [len(b) for b in pass1] == [4, 4, 2] and all(np.array_equal(x, y) for x, y in zip(pass1, pass2))

    dataset = nncf_dataset(calib)
    assert len(list(dataset.get_inference_data())) == len(list(dataset.get_inference_data())) == 10
