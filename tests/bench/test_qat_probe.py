"""bench/qat_probe.py: the QAT measurement is only as good as its fold and its fake quantization."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import qat_probe

from edgepipe.pipeline.backbones import create_model


def _model():
    torch.manual_seed(0)
    model, _ = create_model("tf_efficientnet_lite0", 2, pretrained=False)
    for m in model.modules():  # non-trivial batch-norm statistics, so a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_fold_batchnorm_keeps_the_logits_and_removes_every_batchnorm():
    model, x = _model(), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        folded = qat_probe.fold_batchnorm(model)
        out = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_fake_quant_observes_then_quantizes_weights_onto_the_backend_grid(monkeypatch):
    model, x = qat_probe.fold_batchnorm(_model()), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        layers = qat_probe.wrap_layers(model)
        assert len(layers) == 50  # every Conv2d and the classifier of Lite0
        assert torch.equal(model(x), ref)  # observing: outputs untouched, ranges recorded
        for layer in layers:
            for fq in (layer.inp, layer.out):
                if fq is not None:
                    fq.observing = False
        assert not torch.allclose(model(x), ref, atol=1e-6)

        # The weights a layer computes with are its own, on the per-channel absmax/127 grid.
        used, call = {}, torch.func.functional_call

        def recording_call(module, params, args):
            used["w"] = params["weight"]
            return call(module, params, args)

        monkeypatch.setattr(torch.func, "functional_call", recording_call)
        layer = layers[5]
        layer(torch.randn(1, layer.layer.in_channels, 8, 8))
        monkeypatch.undo()
        w = layer.layer.weight
        q = used["w"] / (w.abs().amax(dim=(1, 2, 3), keepdim=True) / 127)
        assert torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= 127.001
        assert not torch.equal(used["w"], w)

        # Unwrapped, the model is plain float again: what qat_probe exports for the backends.
        plain = qat_probe.unwrap_layers(model)
        assert not any(isinstance(m, qat_probe.FakeQuantLayer) for m in plain.modules())
        assert torch.equal(plain(x), ref)
