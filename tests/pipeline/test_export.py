import numpy as np
import onnx
import pytest
import timm
import torch

from edgepipe.core.errors import CheckFailed
from edgepipe.pipeline.config import ParityConfig
from edgepipe.pipeline.export import check_parity, export_onnx, ort_logits, parity


@pytest.fixture(scope="module")
def tiny_lite0(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=2).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("x") / "m.onnx", 64, opset=18, dynamic_batch=True, simplify=True)
    return model, path


def test_export_folds_same_padding_and_keeps_dynamic_batch(tiny_lite0):
    _, path = tiny_lite0
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Pad" not in ops and "Shape" not in ops  # no runtime padding subgraph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 64, 64]


def test_onnx_matches_torch(tiny_lite0):
    model, path = tiny_lite0
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    result = parity(ref, ort_logits(path, x))
    assert result["max_abs_diff"] < 1e-4 and result["top1_agreement"] == 1.0
    check_parity(result, ParityConfig())


def test_parity_failure_is_an_error_not_a_warning():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(CheckFailed, match="does not match torch") as e:
        check_parity(parity(ref, ref[:, ::-1]), ParityConfig())
    assert e.value.exit_code == 3
    with pytest.raises(CheckFailed, match="max \\|logit diff\\| 1.00e-02"):
        check_parity(parity(ref, ref + 0.01), ParityConfig(max_abs_diff=1e-3))
