import numpy as np
import torch

from edgepipe.pipeline.backbones import create_model, preprocess_spec
from edgepipe.pipeline.config import AugmentConfig, FinetuneConfig
from edgepipe.pipeline.finetune import (
    PROFILES,
    _augment,
    _batchnorms,
    _class_weights,
    _features,
    _train_mode,
    resolve_recipe,
)


def test_null_fields_take_the_device_profile_and_explicit_ones_win():
    recipe = resolve_recipe(FinetuneConfig(device="cpu"))
    assert recipe.epochs == PROFILES["cpu"]["epochs"] and recipe.batchnorm == "frozen"
    assert recipe.precision == "fp32"  # bf16 autocast cost accuracy on CPUs
    recipe = resolve_recipe(FinetuneConfig(device="cpu", epochs=7, batchnorm="train", precision="bf16"))
    assert (recipe.epochs, recipe.batchnorm, recipe.precision) == (7, "train", "bf16")


def test_augment_keeps_shape_and_range_and_changes_pixels():
    x = torch.rand(8, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    y = _augment(x, AugmentConfig(), gen)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
    assert torch.equal(_augment(x, AugmentConfig(flips=False, rot90=False, brightness=0, contrast=0), gen), x)


def test_class_weights_balance_the_loss():
    w = _class_weights(np.array([0] * 30 + [1] * 10), 2, on=True)
    assert torch.allclose(w * torch.tensor([30.0, 10.0]), torch.tensor([20.0, 20.0]))
    assert _class_weights(np.array([0, 1]), 2, on=False) is None


def test_frozen_batchnorm_keeps_imagenet_statistics_while_training():
    model, _ = create_model("tf_efficientnet_lite0", 2, pretrained=True)
    before = _batchnorms(model)[3].running_mean.clone()
    _train_mode(model, "frozen")
    assert model.training and not any(bn.training for bn in _batchnorms(model))
    model(torch.randn(4, 3, 64, 64))
    assert torch.equal(_batchnorms(model)[3].running_mean, before)
    _train_mode(model, "train")
    model(torch.randn(4, 3, 64, 64))
    assert not torch.equal(_batchnorms(model)[3].running_mean, before)


def test_adapted_features_reestimate_batchnorm_statistics():
    model, _ = create_model("tf_efficientnet_lite0", 2, pretrained=True)
    spec = preprocess_spec("tf_efficientnet_lite0", 64)
    images = np.random.default_rng(0).integers(0, 80, (16, 64, 64, 3), dtype=np.uint8)
    before = _batchnorms(model)[0].running_mean.clone()
    feats = _features(model, images, spec, torch.device("cpu"), batch_size=8, adapt_batchnorm=True)
    assert feats.shape == (16, 1280) and not model.training
    assert not torch.equal(_batchnorms(model)[0].running_mean, before)
    assert all(bn.momentum == 0.1 for bn in _batchnorms(model))


def test_one_cycle_schedule_is_valid_for_any_number_of_steps():
    """torch's OneCycleLR divides by zero at 4 steps (a zero-length warm-up): e.g. `epochs: 2` with
    33-64 train images. Every count must give finite positive rates that rise, then fall."""
    from edgepipe.pipeline.finetune import one_cycle

    for total in range(0, 60):
        params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
        opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-4}, {"params": [params[1]], "lr": 1e-3}])
        sched = one_cycle(opt, [1e-4, 1e-3], total)
        rates = []
        for _ in range(total):
            rates.append(opt.param_groups[1]["lr"])  # the rate this step trains with
            opt.step()
            sched.step()
        assert all(0 < r <= 1e-3 * (1 + 1e-9) for r in rates), (total, rates)
        if total >= 8:
            peak = int(np.argmax(rates))
            assert 0 < peak < total - 1 and rates[-1] < rates[peak] / 10, (total, rates)
