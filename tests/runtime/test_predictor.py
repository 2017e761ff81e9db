"""Predictor: the bundle's numbers reproduced from image files, every input kind, pixel formats."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from edgepipe.core.errors import BackendMissing, BundleError, ImageError
from edgepipe.runtime import Predictor
from edgepipe.runtime.bundle import seal
from edgepipe.runtime.evaluate import check
from edgepipe.runtime.predictor import read_image
from tests.conftest import TINY_SPEC, _images
from tests.corpus import HOSTILE_PREDICT_INPUTS


@pytest.mark.parametrize("name, proxy", [("onnxruntime-fp32", False), ("onnxruntime-int8", False),
                                         ("openvino-fp32", False), ("tensorrt-int8", True)])
def test_check_on_the_test_images_reproduces_the_build_report(tiny_build, name, proxy):
    folder = tiny_build["dist"] / name
    verified = json.loads((folder / "bundle.json").read_text())["verified"]
    with Predictor(folder, batch_size=8, proxy=proxy) as p:
        result = check(p, tiny_build["images"])
    assert result["images"] == verified["test_images"] == 64 and not result["unreadable"]
    assert result["accuracy"] == verified["accuracy"] and result["confusion"] == verified["confusion"]


def test_pixels_from_png_files_are_the_pixels_the_build_measured(tiny_build, tiny):
    """Exact preprocessing: logits from the files equal the build's ONNX on its own normalized tensors."""
    import onnxruntime as ort

    files = sorted(tiny_build["images"].rglob("*.png"), key=lambda f: f.name)
    with Predictor(tiny_build["dist"] / "onnxruntime-fp32") as p:
        got = p.logits(np.stack([p.load(f) for f in files]))
    expected = ort.InferenceSession(str(tiny["onnx"])).run(None, {"input": tiny["x"]})[0]
    assert np.abs(got - expected).max() < 1e-5


def test_predict_takes_paths_images_arrays_and_lists(tiny_build):
    rgb8, labels = _images(10, seed=5)
    path = min(tiny_build["images"].rglob("*.png"))
    with Predictor(tiny_build["dist"] / "onnxruntime-fp32", batch_size=4) as p:
        one = p.predict(path)
        assert one.source == str(path) and one.label == p.labels[one.index] == path.parent.name
        assert abs(sum(one.probabilities.values()) - 1) < 1e-9 and one.latency_ms > 0 and one.batch == 1
        assert p.predict(Image.open(path)).probabilities == one.probabilities
        assert p.predict(np.asarray(Image.open(path))).probabilities == one.probabilities
        batch = p.predict(list(rgb8))
        assert [b.batch for b in batch] == [4] * 8 + [2] * 2
        assert [b.index for b in batch] == [b.index for b in p.predict(rgb8)]  # NxHxWx3 array = a batch
        assert (np.array([b.index for b in batch]) == labels).mean() >= 0.9
        mixed = p.predict([path, Image.open(path), rgb8[0]])
        assert [m.source for m in mixed] == [str(path), None, None] and mixed[1].index == one.index
        with pytest.raises(ImageError, match="float pixels are ambiguous"):
            p.predict(rgb8[0].astype(np.float32) / 255)
        with pytest.raises(ImageError, match="cannot predict on a dict"):
            p.predict({"not": "an image"})


def test_grayscale_rgba_and_16_bit_files_are_converted_per_the_bundle_spec(tiny_build, tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = np.full((32, 32, 1), 128, np.uint8)
    files = {"gray": Image.fromarray(gray), "gray16": Image.fromarray(gray.astype(np.uint16) * 257),
             "rgba_opaque": Image.fromarray(np.dstack([rgb, np.full_like(alpha, 255)])),
             "rgba_half": Image.fromarray(np.dstack([rgb, alpha])),
             "big": Image.fromarray(np.repeat(np.repeat(rgb, 2, 0), 2, 1))}
    for name, im in files.items():
        im.save(tmp_path / f"{name}.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")  # really a 16-bit file
    with Predictor(tiny_build["dist"] / "onnxruntime-fp32") as p:
        load = {n: p.load(tmp_path / f"{n}.png") for n in files}
        assert (load["gray"] == gray[..., None]).all() and load["gray"].shape == (32, 32, 3)
        assert (load["gray16"] == load["gray"]).all(), "16-bit is scaled to 8 bits, not clipped"
        assert (load["rgba_opaque"] == rgb).all()
        assert np.abs(load["rgba_half"].astype(int) - np.round(rgb.astype(int) * 128 / 255)).max() <= 1, "alpha over black"
        assert (load["big"] == TINY_SPEC.to_rgb8(files["big"])).all() and load["big"].shape == (32, 32, 3)
        # ndarray inputs take the same path as the files
        assert (p.load(gray.astype(np.uint16) * 257) == load["gray"]).all()
        assert (p.load(np.dstack([rgb, alpha])) == load["rgba_half"]).all()
        assert p.predict(tmp_path / "gray16.png").probabilities == p.predict(np.dstack([gray] * 3)).probabilities


def test_tensorrt_bundle_needs_its_engine_unless_run_as_the_proxy(tiny_build):
    with pytest.raises(BundleError, match="run `edgepipe engine"):
        Predictor(tiny_build["dist"] / "tensorrt-int8")
    with pytest.raises(BundleError, match="has no proxy"):
        Predictor(tiny_build["dist"] / "onnxruntime-fp32", proxy=True)


def test_missing_backend_names_the_package_to_install(tiny_build, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendMissing) as e:
        Predictor(tiny_build["dist"] / "openvino-fp32")
    assert "needs openvino" in str(e.value) and "pip install 'edgepipe[runtime]' openvino==" in str(e.value)


def test_proxy_without_its_backend_names_the_package_to_install(tiny_build, monkeypatch):
    """--proxy runs a TensorRT bundle's Q/DQ graph on ONNX Runtime: missing, it is BackendMissing, not a crash."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendMissing) as e:
        Predictor(tiny_build["dist"] / "tensorrt-int8", proxy=True)
    assert "needs onnxruntime" in str(e.value) and "pip install onnxruntime" in str(e.value)


def test_labels_that_do_not_fit_the_model_are_refused(bundle_copy):
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    meta["labels"].append("third")
    (folder / "bundle.json").write_text(json.dumps(seal(meta)))  # as if built so: re-sealed
    with pytest.raises(BundleError, match="2 outputs for 3 labels"):
        Predictor(folder)


@pytest.mark.parametrize("case", sorted(HOSTILE_PREDICT_INPUTS))
def test_read_image_refuses_what_is_not_a_sane_image_file_before_reading_it(tmp_path, case):
    """A FIFO (would block), /dev/zero (endless), a sparse 300 MiB file, a folder: one ImageError
    that names the path, at once; the bytes are never read (no MemoryError, no hang)."""
    import signal

    make, fragment = HOSTILE_PREDICT_INPUTS[case]
    path = make(tmp_path)

    def hung(*_):
        raise AssertionError(f"read_image({path}) still running after 30 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(ImageError) as e:
            read_image(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert e.value.problem.startswith(f"cannot read image {path}: it ")
    assert fragment in e.value.problem and "\n" not in e.value.problem
