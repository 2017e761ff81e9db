"""TensorRT cannot be installed in this workplace: the engine build is skipped with its reason,
and everything around it is checked: the bundle, the Q/DQ graph against TensorRT's rules, and the
graph's accuracy on ONNX Runtime as a labelled proxy."""

import importlib.util
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgepipe.targets import get_target
from edgepipe.targets.tensorrt.config import TensorRtTargetConfig

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
SETTINGS = TensorRtTargetConfig(name="tensorrt")


@pytest.fixture(scope="module")
def int8_bundle(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt-int8")
    return out, get_target("tensorrt").build(tiny["onnx"], "int8", tiny["calib"], out, SETTINGS)


def test_int8_bundle_has_everything_to_build_on_the_device(int8_bundle):
    out, artifacts = int8_bundle
    names = {p.name for p in artifacts[0].files}
    assert {"model_qdq.onnx", "preprocess.json", "trt_engine.py", "build_engine.sh"} <= names
    # the Q/DQ graph carries its scales: no calibration data rides along (nothing on the device reads it)
    assert "calibration.npz" not in names and "--calibration" not in (out / "trt_engine.py").read_text()
    assert "--onnx model_qdq.onnx --precision int8" in (out / "build_engine.sh").read_text()
    if not HAS_TRT:
        assert artifacts[0].status == "skipped" and artifacts[0].reason == "tensorrt not installed"


def test_qdq_graph_follows_tensorrt_rules(int8_bundle):
    out, _ = int8_bundle
    model = onnx.load(str(out / "model_qdq.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qnodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qnodes
    producers = {o: n for n in model.graph.node for o in n.output}

    def is_weight(tensor):  # an initializer, or the QuantizeLinear of one (Q/DQ pair kept on weights)
        q = producers.get(tensor)
        return tensor in init or (q is not None and q.op_type == "QuantizeLinear" and q.input[0] in init)

    for n in qnodes:
        if len(n.input) > 2 and n.input[2] in init:
            zp = init[n.input[2]]
            assert zp.dtype == np.int8, "TensorRT reads uint8 zero points as int8"
            assert not zp.any(), "TensorRT only supports symmetric quantization"
        scale = init.get(n.input[1])
        if scale is not None and scale.size > 1:  # per-channel: weights only, axis 0
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            assert axis == 0 and is_weight(n.input[0])
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2:
            assert n.input[2] in init and init[n.input[2]].dtype == np.float32, "bias stays float for TensorRT"
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    assert all(producers[w].op_type == "DequantizeLinear" for w in conv_weights), "weights keep a Q/DQ pair"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13


def test_proxy_row_runs_the_qdq_graph_on_onnxruntime(int8_bundle, tiny):
    _, artifacts = int8_bundle
    if HAS_TRT:
        pytest.skip("TensorRT is installed: the real engine replaces the proxy")
    proxy = next(a for a in artifacts if a.proxy)
    assert "proxy" in proxy.proxy and proxy.name == "tensorrt-int8-proxy"
    with get_target("tensorrt").load(proxy, threads=1) as runner:
        out = runner.infer(tiny["x"])
    assert (out.argmax(1) == tiny["reference"].argmax(1)).mean() >= 0.95


def test_fp16_bundle_carries_both_graphs(tiny, tmp_path):
    [artifact] = get_target("tensorrt").build(tiny["onnx"], "fp16", tiny["calib"], tmp_path, SETTINGS)
    fp16 = onnx.load(str(tmp_path / "model_fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O kept
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    script = (tmp_path / "build_engine.sh").read_text()
    assert "model_fp16.onnx" in script and "model.onnx" in script


def test_engine_script_runs_standalone_and_explains_missing_tensorrt(int8_bundle):
    out, _ = int8_bundle
    if HAS_TRT:
        pytest.skip("TensorRT is installed")
    result = subprocess.run([sys.executable, str(out / "trt_engine.py"), "build", "--onnx", "model_qdq.onnx",
                             "--precision", "int8", "--out", "model.plan"], cwd=out, capture_output=True, text=True)
    assert result.returncode == 2 and "tensorrt is not installed" in result.stderr


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt not installed: engine build and run need TensorRT and a GPU")
def test_engine_builds_and_agrees(int8_bundle, tiny):
    _, artifacts = int8_bundle
    engine = artifacts[0]
    with get_target("tensorrt").load(engine, threads=1) as runner:
        out = runner.infer(tiny["x"][:8])
    assert (out.argmax(1) == tiny["reference"][:8].argmax(1)).mean() >= 0.95
