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
