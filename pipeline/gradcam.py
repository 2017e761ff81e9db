"""Grad-CAM heat maps of the float model (captum's LayerGradCam) and the PNGs the report embeds.

Grad-CAM weighs a layer's feature maps by the mean gradient of the class score over each map:
at the last spatial layer of a CNN whose head is global pooling + linear, that is exactly the
classic class activation map, so the heat map says where the float model found its evidence.
Everything here leaves the model as it found it (parameters, gradients, train / eval flags).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def _eval_mode(model: torch.nn.Module, frozen: bool = False) -> Iterator[None]:
    """Eval mode for the block (BatchNorm must not update its running statistics, dropout must
    be off), then every module's own flag back: a caller may hold some modules in eval while
    training the rest, so model.train(was) would not restore it. frozen: no parameter requires
    grad meanwhile, so the forward pass records a graph only from the hooked layer on (captum
    makes that layer's output require grad): about half the time of a full graph."""
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()] if frozen else []
    model.eval()
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in flags:
            m.training = training
        for p, requires in grads:
            p.requires_grad_(requires)


def _spatial(t) -> bool:
    # 4-D with more than one position: a 1x1 map (a pooled vector, an SE gate) has no "where"
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] * t.shape[3] > 1


def target_layer(model: torch.nn.Module, example) -> tuple[str, torch.nn.Module]:
    """(name, module) of the last module, in forward order, whose output is a spatial 4-D feature
    map, found by running `example` (1 x 3 x H x W) once with forward hooks.

    Why the last one: it is the one the head pools, so its Grad-CAM is the map the decision was
    read from, and it has the most semantic features. A hook fires when its module returns, so a
    container (timm's BatchNormAct2d `bn2`, a Sequential) comes after its children and is chosen
    over them: on timm's EfficientNet-Lite that is `bn2`, the conv_head's BatchNorm + ReLU6, the
    1280-channel map global pooling averages (at 32 px it is 1x1, and an earlier block is chosen)."""
    last: list[tuple[str, torch.nn.Module]] = []
    names = {m: n for n, m in model.named_modules() if n}  # "" is the model itself: its output is the logits

    def hook(module, _inputs, output):
        if module in names and _spatial(output):
            last.append((names[module], module))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        x = torch.as_tensor(example, dtype=torch.float32)
        with _eval_mode(model), torch.no_grad():
            model(x[:1].to(_device(model)))
    finally:
        for h in handles:
            h.remove()
    if not last:
        raise ValueError(f"{type(model).__name__} has no layer with a spatial 4-D output for a "
                         f"{tuple(torch.as_tensor(example).shape[-2:])} input: no Grad-CAM possible")
    return last[-1]


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def grad_cam(model: torch.nn.Module, x: np.ndarray, classes: Sequence[int], layer: torch.nn.Module | None = None,
             batch_size: int = 16) -> np.ndarray:
    """N x H x W float32 heat maps in [0, 1] for normalized N x 3 x H x W images: captum's
    LayerGradCam for classes[i] on `layer` (default: target_layer), ReLU'd, upsampled bilinearly
    to the input size and divided by each map's maximum (a map with no positive evidence stays 0).

    Runs in eval mode, batch by batch, on the device the model is on (the build's is on the CPU);
    captum takes gradients with torch.autograd.grad, and with respect to the layer's output only,
    so no parameter's .grad is touched."""
    from captum.attr import LayerAttribution, LayerGradCam

    x = np.asarray(x, dtype=np.float32)
    classes = [int(c) for c in classes]
    if x.ndim != 4 or len(classes) != len(x):
        raise ValueError(f"grad_cam takes N x 3 x H x W images and N classes, got {x.shape} and {len(classes)}")
    if layer is None:
        layer = target_layer(model, x[:1])[1]
    device, (h, w) = _device(model), x.shape[2:]
    cam = LayerGradCam(model, layer)
    out = np.zeros((len(x), h, w), np.float32)
    with _eval_mode(model, frozen=True), torch.enable_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size]).to(device)
            attr = cam.attribute(xb, target=classes[i:i + batch_size], relu_attributions=True)
            up = LayerAttribution.interpolate(attr.detach(), (h, w), interpolate_mode="bilinear")[:, 0]
            peak = up.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]  # 0 / tiny = 0: an empty map stays empty
            out[i:i + len(xb)] = (up.clamp_min(0) / peak).cpu().numpy()
    return out


def overlay_png(rgb8: np.ndarray, heat: np.ndarray, size: int = 160, alpha: float = 0.45, cmap: str = "jet") -> bytes:
    """A PNG: the image and the image with the heat map blended over it ("jet": blue cold, red
    hot), side by side, each panel at most `size` px. Quantized to 128 colours without dithering:
    the report embeds dozens, and an ELPV cell pair at 160 px is then 17-26 KB (50-80 KB in full
    colour at 224 px); the heat map is smooth, so the palette costs it nothing visible."""
    from matplotlib import colormaps
    from PIL import Image

    rgb8 = np.asarray(rgb8, dtype=np.uint8)
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0, 1)
    if rgb8.ndim != 3 or rgb8.shape[2] != 3 or heat.shape != rgb8.shape[:2]:
        raise ValueError(f"overlay_png takes H x W x 3 uint8 and an H x W map, got {rgb8.shape} and {heat.shape}")
    colour = colormaps[cmap](heat)[..., :3] * 255  # H x W x 3, float
    blend = (1 - alpha) * rgb8 + alpha * colour  # uniform: cold regions read blue, not as untouched
    pair = np.concatenate([rgb8, np.clip(blend, 0, 255).astype(np.uint8)], axis=1)
    image = Image.fromarray(pair)
    scale = min(1.0, size / max(rgb8.shape[:2]))
    if scale < 1:
        image = image.resize((max(1, round(pair.shape[1] * scale)), max(1, round(pair.shape[0] * scale))),
                             Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    return buf.getvalue()
