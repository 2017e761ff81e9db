"""Training augmentation on batches already on the training device (see AugmentConfig).

Only what keeps a class what it is runs by default: zoom-in, shift, brightness and contrast.
Flips and 90° turns change what an image shows where orientation is the class (digits, arrows,
signs): they run only when the config opts in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgepipe.pipeline.config import AugmentConfig


def _augment(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """x: N,3,H,W float in [0,1]. Per sample: zoom-in and shift (one affine resample; the border
    pixels repeat where the shift passes the edge), then the opt-in flips and 90° turns, then
    contrast and brightness jitter. Nothing here mirrors or turns an image unless asked."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=gen).to(x.device)  # noqa: E731
    if aug.zoom or aug.shift:
        scale = 1 / (1 + r(n) * aug.zoom)  # < 1: the sampling grid covers less than the image = zoom in
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = (r(n, 2) * 2 - 1) * 2 * aug.shift  # grid coordinates span 2 units per side
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.flips:
        x = torch.where(r(n, 1, 1, 1) < 0.5, x.flip(3), x)
        x = torch.where(r(n, 1, 1, 1) < 0.5, x.flip(2), x)
    if aug.rot90 and x.shape[2] == x.shape[3]:
        k = torch.randint(0, 4, (n,), generator=gen)
        x = torch.stack([torch.rot90(xi, int(ki), (1, 2)) for xi, ki in zip(x, k)])
    if aug.contrast:
        c = 1 + (r(n, 1, 1, 1) * 2 - 1) * aug.contrast
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * c + m
    if aug.brightness:
        x = x + (r(n, 1, 1, 1) * 2 - 1) * aug.brightness
    return x.clamp(0, 1)


class _Normalize:
    """The spec's normalisation on augmented NCHW tensors already on the training device."""

    def __init__(self, spec, device):
        self.spec = spec
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return self.spec.standardize(x01, self.mean, self.std).contiguous(memory_format=torch.channels_last)
