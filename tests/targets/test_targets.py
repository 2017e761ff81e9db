"""Each target: build -> load -> infer agrees with the float reference on a tiny trained model."""

import numpy as np
import pytest

from edgepipe.targets import REGISTRY, get_target
from edgepipe.targets.base import Runner
from edgepipe.targets.onnxruntime.config import OnnxRuntimeTargetConfig
from edgepipe.targets.openvino.config import OpenVinoTargetConfig

SETTINGS = {"onnxruntime": OnnxRuntimeTargetConfig(name="onnxruntime"), "openvino": OpenVinoTargetConfig(name="openvino")}
# fp32 must match to float rounding; reduced precisions must keep the confident answers.
TOLERANCE = {"fp32": 1e-3, "fp16": 0.05, "int8": None}


@pytest.mark.parametrize("target, precision", [
    ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
    ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"),
])
def test_build_load_infer_agrees_with_reference(tiny, tmp_path, target, precision):
    t = get_target(target)
    if reason := t.unavailable_reason():
        pytest.skip(reason)
    [artifact] = t.build(tiny["onnx"], precision, tiny["calib"], tmp_path / f"{target}-{precision}", SETTINGS[target])
    assert artifact.status == "built" and artifact.path.is_file() and artifact.size_bytes() > 0
    runner = t.load(artifact, threads=1)
    assert isinstance(runner, Runner)
    with runner:
        out = runner.infer(tiny["x"])
        assert runner.inference_time > 0
        single = runner.infer(tiny["x"][:1])
    assert not runner.is_active
    ref = tiny["reference"]
    assert out.shape == ref.shape
    assert np.allclose(single, out[:1], atol=1e-3)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    if TOLERANCE[precision] is not None:
        assert np.abs(out - ref).max() < TOLERANCE[precision] * max(1.0, np.abs(ref).max())
    if precision == "int8":
        assert artifact.parent == f"{target}-fp32" and artifact.details["calibration_images"] == 64


def test_int8_is_really_quantized(tiny, tmp_path):
    import onnx

    [artifact] = get_target("onnxruntime").build(tiny["onnx"], "int8", tiny["calib"], tmp_path, SETTINGS["onnxruntime"])
    ops = [n.op_type for n in onnx.load(str(artifact.path)).graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    assert artifact.size_bytes() < tiny["onnx"].stat().st_size or len(ops) > 10


def test_runner_refuses_infer_before_activate(tiny, tmp_path):
    t = get_target("onnxruntime")
    [artifact] = t.build(tiny["onnx"], "fp32", None, tmp_path, SETTINGS["onnxruntime"])
    with pytest.raises(RuntimeError, match="must be activated"):
        t.load(artifact, threads=1).infer(tiny["x"])


def test_registry_names_match_target_classes():
    for name in REGISTRY:
        assert get_target(name).name == name


def test_openvino_batch_1_runs_on_a_static_copy(tiny, tmp_path):
    t = get_target("openvino")
    if reason := t.unavailable_reason():
        pytest.skip(reason)
    [artifact] = t.build(tiny["onnx"], "fp32", None, tmp_path, SETTINGS["openvino"])
    with t.load(artifact, threads=1) as runner:
        assert runner.input_shape[0] is None  # the artifact keeps its dynamic batch
        assert list(runner.single.get_compiled_model().input(0).get_shape())[0] == 1
        batch = runner.infer(tiny["x"][:3])
        singles = np.concatenate([runner.infer(tiny["x"][i:i + 1]) for i in range(3)])
    assert np.allclose(singles, batch, atol=1e-4)


@pytest.mark.parametrize("precision, hint", [("fp32", "f32"), ("int8", None), ("fp16", None)])
def test_openvino_pins_f32_only_for_the_fp32_row(tiny, tmp_path, precision, hint):
    # On bf16-capable CPUs OpenVINO would otherwise compute the "fp32" row in bf16; the reduced
    # precision rows keep the device's choice, and the report says which it was.
    t = get_target("openvino")
    if reason := t.unavailable_reason():
        pytest.skip(reason)
    [artifact] = t.build(tiny["onnx"], precision, tiny["calib"], tmp_path, SETTINGS["openvino"])
    with t.load(artifact, threads=1) as runner:
        assert runner.precision_hint == hint
        assert runner.runtime_info().startswith("OpenVINO CPU computing in ")
        if hint:
            assert runner.runtime_info() == "OpenVINO CPU computing in f32"


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_runs_in_chunks_and_still_agrees(tiny, tmp_path, monkeypatch, method):
    """ORT's histogram calibrators keep every activation of every image until the end (ELPV: over
    20 GB for 300 images); edgepipe feeds them 16 images at a time and ORT merges the histograms."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    chunks = []
    real = HistogramCalibrater.collect_data

    def spy(self, reader):
        chunks.append(len(list(iter(reader.get_next, None))))
        reader.set_range(*reader._range)
        return real(self, reader)

    from edgepipe.calibration.ort_reader import OrtCalibrationReader

    real_set_range = OrtCalibrationReader.set_range

    def remember(self, start_index, end_index):
        self._range = (start_index, end_index)
        real_set_range(self, start_index, end_index)

    monkeypatch.setattr(HistogramCalibrater, "collect_data", spy)
    monkeypatch.setattr(OrtCalibrationReader, "set_range", remember)
    settings = OnnxRuntimeTargetConfig(name="onnxruntime", calibration_method=method)
    [artifact] = get_target("onnxruntime").build(tiny["onnx"], "int8", tiny["calib"], tmp_path, settings)
    assert chunks == [16, 16, 16, 16]  # the 64 calibration images, 16 at a time
    with get_target("onnxruntime").load(artifact, threads=1) as runner:
        out = runner.infer(tiny["x"])
    assert (out.argmax(1) == tiny["reference"].argmax(1)).mean() >= 0.95


def test_calibration_chunks_divide_the_set():
    from edgepipe.targets.onnxruntime.builder import calibration_chunk

    assert [calibration_chunk(n) for n in (300, 64, 7, 17, 1, 48)] == [15, 16, 7, 1, 1, 16]
