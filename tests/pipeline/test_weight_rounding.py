import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.pipeline.weight_rounding import (
    DAMPING,
    QMAX,
    find_layers,
    layer_hessians,
    patches,
    round_rows,
    round_weights,
)
from edgepipe.targets.onnxruntime.builder import OrtQuantPreset


def _conv_model(w: np.ndarray, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=list(w.shape[2:]), **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("cin, cout, group, kernel, attrs", [
    (3, 8, 1, 3, {"pads": [0, 0, 1, 1], "strides": [2, 2]}),  # TF-"same" stem: asymmetric pads, stride 2
    (6, 6, 6, 3, {"pads": [1, 1, 1, 1]}),  # depthwise
    (4, 6, 2, 5, {"pads": [2, 1, 2, 3], "dilations": [2, 1]}),  # grouped, dilated, uneven pads
    (5, 7, 1, 1, {}),  # pointwise
])
def test_patches_times_weights_is_the_conv(cin, cout, group, kernel, attrs):
    """If the patches were laid out wrong, the Hessians would weigh the wrong inputs."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.normal(size=(cout, cin // group, kernel, kernel)).astype(np.float32)
    x = rng.normal(size=(2, cin, 11, 13)).astype(np.float32)
    model = _conv_model(w, group=group, **attrs)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    [layer] = find_layers(model)
    p = patches(x, layer)  # [group, N*Ho*Wo, K]
    rows = w.reshape(group, cout // group, -1)
    y = np.matmul(p, rows.transpose(0, 2, 1))  # [group, N*Ho*Wo, cout/group]
    n, _, ho, wo = expected.shape
    y = y.reshape(group, n, ho, wo, cout // group).transpose(1, 0, 4, 2, 3).reshape(expected.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_rounding_stays_on_the_grid_keeps_the_scale_and_lowers_the_error():
    rng = np.random.default_rng(1)
    # Smooth inputs: neighbouring taps are highly correlated, so errors in their sum dominate.
    base = rng.normal(size=(4000, 1))
    x = base + 0.05 * rng.normal(size=(4000, 9))
    h = x.T @ x
    w = rng.normal(size=(16, 9))
    w[3] = 0  # a dead channel stays dead
    rounded, before, after = round_rows(w, h)
    scale = np.abs(w).max(1) / QMAX
    live = scale > 0
    levels = rounded[live] / scale[live, None]
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert np.abs(levels).max() <= QMAX + 1e-3
    np.testing.assert_allclose(np.abs(rounded).max(1), np.abs(w).max(1), rtol=1e-6)  # same scale
    assert not rounded[3].any()
    nearest = np.round(w[live] / scale[live, None]) * scale[live, None]
    damped = h + DAMPING * np.mean(np.diag(h)) * np.eye(len(h))  # what round_rows minimises
    err = lambda r: float(np.einsum("rk,kl,rl->", r - w[live], damped, r - w[live]))
    assert after == pytest.approx(err(rounded[live]), rel=1e-4) and before == pytest.approx(err(nearest), rel=1e-6)
    assert after < 0.5 * before
    assert np.abs(rounded - w).max() <= scale.max() * (1 + 1e-6)  # each weight moved to a grid neighbour


def test_backend_quantizer_reproduces_the_rounded_weights(tiny, tmp_path):
    """The whole point: ORT's own per-channel quantizer must land on exactly these values."""
    rounded_path = tmp_path / "rounded.onnx"
    summary = round_weights(tiny["onnx"], rounded_path, tiny["calib"], images=32, threads=1)
    assert summary["layers"] >= 3 and summary["data_aware_layers"] >= 2 and summary["median_error_ratio"] < 1
    aware = [p for p in summary["per_layer"] if p["rounding"] == "data_aware"]
    assert all(p["rounded_error"] <= p["nearest_error"] + 1e-9 for p in aware)
    rounded = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rounded_path)).graph.initializer}
    qdq_path = tmp_path / "qdq.onnx"
    OrtQuantPreset.cpu().quantize(rounded_path, qdq_path, tiny["calib"])
    qdq = onnx.load(str(qdq_path))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    checked = 0
    for n in qdq.graph.node:
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0, np.uint8)).dtype == np.int8:
            q, s = inits[n.input[0]], inits[n.input[1]]
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            shape = [-1 if i == axis else 1 for i in range(q.ndim)]
            dq = q * (s.reshape(shape) if s.ndim else s)
            assert any(v.shape == dq.shape and np.allclose(v, dq, rtol=0, atol=1e-6 * np.abs(v).max())
                       for v in rounded.values()), n.name
            checked += 1
    assert checked == summary["layers"]


def test_rounded_graph_is_closer_to_float_than_nearest_rounding(tiny, tmp_path):
    import onnxruntime as ort

    model = onnx.load(str(tiny["onnx"]))
    layers = find_layers(model)
    x = np.concatenate(list(tiny["calib"].batches(16)))
    h, samples = layer_hessians(model, layers, x, threads=1)
    assert set(h) == {layer.node for layer in layers} and min(samples.values()) >= len(x)
    round_weights(tiny["onnx"], tmp_path / "rounded.onnx", tiny["calib"], images=len(x), threads=1)
    inits = {i.name: i for i in model.graph.initializer}
    for layer in layers:
        w = numpy_helper.to_array(inits[layer.weight])
        s = np.abs(w).reshape(len(w), -1).max(1).reshape((-1,) + (1,) * (w.ndim - 1)) / QMAX
        inits[layer.weight].CopyFrom(numpy_helper.from_array((np.round(w / s) * s).astype(np.float32), layer.weight))

    def out(m):
        sess = ort.InferenceSession(m if isinstance(m, bytes) else str(m), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    ref = out(tiny["onnx"])
    nearest_err = np.abs(out(model.SerializeToString()) - ref).mean()
    rounded_err = np.abs(out(tmp_path / "rounded.onnx") - ref).mean()
    assert rounded_err < nearest_err
