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
    assert torch.equal(_augment(x, AugmentConfig(zoom=0, shift=0, brightness=0, contrast=0), gen), x)


def _orientation_toys(n: int = 64, size: int = 32) -> torch.Tensor:
    """Two orientation-sensitive classes in one batch: a ramp rising to the right (class 0) and
    horizontal stripes (class 1). A flip turns the ramp into the other way round, a 90° turn turns
    stripes into vertical ones: a different class on a task where orientation is the label."""
    ramp = torch.linspace(0.1, 0.9, size).view(1, 1, 1, size).expand(n // 2, 3, size, size)
    rows = (torch.arange(size) // 4 % 2).float().view(1, 1, size, 1).expand(n // 2, 3, size, size) * 0.8 + 0.1
    return torch.cat([ramp, rows])


def _still_same_class(y: torch.Tensor) -> torch.Tensor:
    half = len(y) // 2
    ramp, rows = y[:half].mean(dim=(1, 2)), y[half:].mean(dim=1)  # column profile, N x W / N x H x W
    rises = ramp[:, -4:].mean(1) > ramp[:, :4].mean(1)
    horizontal = rows.var(dim=1).mean(1) > rows.var(dim=2).mean(1)  # variance down the columns > along rows
    return torch.cat([rises, horizontal])


def test_default_augmentation_keeps_an_orientation_sensitive_class_what_it_is():
    gen = torch.Generator().manual_seed(0)
    x = _orientation_toys()
    for _ in range(5):
        assert _still_same_class(_augment(x, AugmentConfig(), gen)).all()
    # the opt-in transforms do turn them into the other class: the check above can fail
    turned = _still_same_class(_augment(x, AugmentConfig(flips=True, rot90=True), gen))
    assert not turned[:32].all() and not turned[32:].all()


def test_zoom_and_shift_move_content_without_mirroring_it():
    gen = torch.Generator().manual_seed(1)
    x = _orientation_toys(8)
    y = _augment(x, AugmentConfig(brightness=0, contrast=0), gen)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert _still_same_class(y).all()
    assert torch.equal(_augment(x, AugmentConfig(zoom=0, shift=0, brightness=0, contrast=0), gen), x)


def test_the_augmentations_that_run_are_said_in_words():
    assert AugmentConfig().describe() == ("zoom up to 10%, shift up to 5%, brightness ±0.2, contrast ±0.2 "
                                          "(flips and 90° turns off: they can change a class)")
    assert AugmentConfig(flips=True, rot90=True, zoom=0, shift=0, brightness=0, contrast=0).describe() == \
        "flips, 90° turns"


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
