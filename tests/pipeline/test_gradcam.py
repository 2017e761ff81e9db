"""Grad-CAM (pipeline/gradcam.py): the heat map's peak sits on the object the class means, the layer
is the last spatial one, and computing it leaves the model as it was."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from edgepipe.pipeline.backbones import create_model
from edgepipe.pipeline.gradcam import grad_cam, overlay_png, target_layer

SIZE, SIDE = 32, 8
TOP_LEFT, BOTTOM_RIGHT = (2, 7), (22, 17)  # (row, col) corners: off the diagonal, so a transposed map misses


class SquareNet(torch.nn.Module):
    """Class 0 = "a bright square is present", by hand: a brightness detector (3x3 mean over the
    channels minus a threshold, ReLU), a stride-2 smoothing, global average pool, linear. Class 1
    is the opposite evidence, so its Grad-CAM has nothing positive anywhere."""

    def __init__(self):
        super().__init__()
        self.detect = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.smooth = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.features = torch.nn.Sequential(self.detect, torch.nn.ReLU(), self.smooth, torch.nn.ReLU())
        self.pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.detect.weight.fill_(1 / 27)
            self.detect.bias.fill_(-0.5)
            self.smooth.weight.copy_(torch.eye(4)[:, :, None, None].expand(4, 4, 3, 3) / 9)
            self.smooth.bias.zero_()
            self.head.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def square_at(corner, seed=0) -> np.ndarray:
    """1 x 3 x SIZE x SIZE: a dark noisy image with one bright square."""
    x = np.random.default_rng(seed).uniform(0, 0.2, (1, 3, SIZE, SIZE)).astype(np.float32)
    r, c = corner
    x[:, :, r:r + SIDE, c:c + SIDE] = 0.9
    return x


def inside(rc, corner) -> bool:
    return corner[0] <= rc[0] < corner[0] + SIDE and corner[1] <= rc[1] < corner[1] + SIDE


def test_the_heat_map_peak_moves_with_the_square():
    model = SquareNet().eval()
    x = np.concatenate([square_at(TOP_LEFT, 1), square_at(BOTTOM_RIGHT, 2)])
    assert (model(torch.from_numpy(x)).argmax(1) == 0).all()  # the square is seen in both
    heat = grad_cam(model, x, [0, 0])
    assert heat.shape == (2, SIZE, SIZE) and heat.dtype == np.float32
    assert np.allclose(heat.max((1, 2)), 1) and heat.min() >= 0
    peaks = [np.unravel_index(h.argmax(), h.shape) for h in heat]
    assert inside(peaks[0], TOP_LEFT) and inside(peaks[1], BOTTOM_RIGHT), peaks
    quadrant = [(r >= SIZE // 2, c >= SIZE // 2) for r, c in peaks]
    assert quadrant == [(False, False), (True, True)]
    for h, corner in zip(heat, (TOP_LEFT, BOTTOM_RIGHT)):  # the evidence is the square, not a lucky pixel
        r, c = corner
        mask = np.zeros_like(h, bool)
        mask[r:r + SIDE, c:c + SIDE] = True
        assert h[mask].mean() > 0.5 > 5 * h[~mask].mean()


def test_a_class_without_positive_evidence_gets_an_all_zero_map():
    heat = grad_cam(SquareNet().eval(), square_at(TOP_LEFT), [1])
    assert np.isfinite(heat).all() and not heat.any()


def test_batches_give_the_maps_of_one_pass():
    model = SquareNet().eval()
    x = np.concatenate([square_at(TOP_LEFT, s) for s in range(3)] + [square_at(BOTTOM_RIGHT, s) for s in range(2)])
    assert np.allclose(grad_cam(model, x, [0] * 5, batch_size=2), grad_cam(model, x, [0] * 5), atol=1e-6)


def test_the_layer_is_the_last_spatial_one():
    model = SquareNet()
    name, module = target_layer(model, square_at(TOP_LEFT))
    assert (name, module) == ("features", model.features)  # the Sequential returns after its last ReLU; the pool is 1x1


@pytest.mark.parametrize("size, layer, shape", [
    (64, "bn2", (1280, 2, 2)),  # conv_head's BatchNorm + ReLU6: the map the global pool averages
    (32, "blocks.5.0.bn1", (672, 2, 2)),  # at 32 px bn2 is 1x1: the last 2x2 map, before blocks.5's stride 2
])
def test_on_efficientnet_lite_the_layer_is_the_map_the_head_pools(size, layer, shape):
    model, _ = create_model("tf_efficientnet_lite0", 2, pretrained=False)
    x = np.zeros((1, 3, size, size), np.float32)
    name, module = target_layer(model, x)
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    with torch.no_grad():
        model.eval()(torch.from_numpy(x))
    handle.remove()
    assert (name, seen) == (layer, [shape])


def test_grad_cam_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model, _ = create_model("tf_efficientnet_lite0", 2, pretrained=False)
    model.train()
    model.blocks[0].eval()  # a caller's mix of modes: model.train(was) would not restore it
    for p in model.conv_stem.parameters():
        p.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm running stats included
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    heat = grad_cam(model, x, [0, 1, 0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    # and it ran in eval mode: the same maps as from the model in eval
    assert np.allclose(heat, grad_cam(model.eval(), x, [0, 1, 0]), atol=1e-5)


def test_overlay_png_is_the_image_and_its_heat_side_by_side_and_small():
    from skimage import data

    rgb8 = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)))  # a busy photograph: PNG's worst case
    heat = np.zeros((224, 224), np.float32)
    heat[:112, 112:] = 1
    png = overlay_png(rgb8, heat)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert image.shape == (160, 320, 3) and len(png) < 40_000
    small = np.asarray(Image.fromarray(rgb8).resize((160, 160))).astype(int)
    assert np.abs(image[:, :160] - small).mean() < 8  # the left panel is the image itself
    assert np.abs(image[:, 160:] - small).mean() > 20  # the right one is not


def test_the_heat_is_red_where_hot_and_blue_where_cold():
    gray = np.full((96, 96, 3), 128, np.uint8)
    heat = np.zeros((96, 96), np.float32)
    heat[:48, 48:] = 1  # hot top-right quadrant
    image = np.asarray(Image.open(io.BytesIO(overlay_png(gray, heat))).convert("RGB")).astype(int)
    assert image.shape == (96, 192, 3)  # under `size`: not resized
    assert (image[:, :96] == 128).all()
    hot, cold = image[5:40, 96 + 55:96 + 90], image[55:90, 96 + 5:96 + 40]
    assert hot[..., 0].mean() > hot[..., 2].mean() + 40 and cold[..., 2].mean() > cold[..., 0].mean() + 40
