"""Cheap statistics of an input image, the same at build time (the bundle's drift reference) and on
the device (telemetry): what a drift monitor compares, and nothing that identifies the image.

Computed on the image as the model sees it (RGB uint8 after the bundle's resize), in luminance, so
a new camera, exposure, blur or season moves them while the image itself is never kept. numpy only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

STATS = ("mean", "std", "p05", "p50", "p95", "sharpness")  # the order of image_stats' columns

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
GRID = 56  # pixels per side the statistics are taken on
# The grid telemetry and the drift reference round each signal to, so both sides compare on one grid
DECIMALS = {"confidence": 6, "margin": 6, **{s: 2 for s in STATS}, "sharpness": 1}
_Q = np.array([5, 50, 95]) / 100  # the percentiles' quantiles, as np.percentile computes them


def image_stats(rgb8: np.ndarray) -> np.ndarray:
    """N x len(STATS) float32 for N x H x W x 3 uint8 images: luminance mean, standard deviation and
    5th / 50th / 95th percentiles (0-255), and sharpness, the variance of the 4-neighbour Laplacian
    of the luminance on the sampled grid (a blurred or out-of-focus image has little high-frequency
    energy)."""
    if rgb8.ndim != 4 or rgb8.shape[-1] != 3 or rgb8.dtype != np.uint8:
        raise ValueError(f"expected N x H x W x 3 uint8 images, got {rgb8.dtype} {rgb8.shape}")
    # every k-th pixel, about GRID x GRID of them: 0.1 ms an image instead of 2 ms at 224 px, about
    # 3 % of a 3 ms int8 inference on a quiet CPU; build and device sample alike, so they compare.
    # Written for few numpy calls (at batch 1 their overhead is most of the cost); the same bits as the
    # plain definition (np.percentile, .mean, .std, .var), which tests/runtime/test_telemetry.py checks.
    n, h, w = rgb8.shape[:3]
    pixels, rows, cols = _grid(h, w, max(1, min(h, w) // GRID))
    # = rgb8[:, ::k, ::k]; np.take copies the sampled pixels in half the time of a strided slice
    gray = np.take(rgb8.reshape(n, h * w, 3), pixels, axis=1).reshape(n, rows, cols, 3).astype(np.float32) @ _LUMA
    flat = gray.reshape(len(gray), -1)
    out = np.empty((len(gray), len(STATS)), np.float32)
    mean, var = _mean_var(flat)
    out[:, 0], out[:, 1] = mean, np.sqrt(var)
    out[:, 2:5] = _percentiles(flat)
    lap = 4 * gray[:, 1:-1, 1:-1]  # minus the 4 neighbours, in place
    for neighbour in (gray[:, :-2, 1:-1], gray[:, 2:, 1:-1], gray[:, 1:-1, :-2], gray[:, 1:-1, 2:]):
        lap -= neighbour
    out[:, 5] = _mean_var(lap.reshape(len(lap), -1))[1] if lap.size else 0
    return out


def _mean_var(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x.mean(1) and x.var(1) of N x m float32, bit for bit: numpy's own steps (numpy/_core/_methods.py
    _var), without its Python wrapper, which at 3,136 values cost as much as the arithmetic."""
    n = np.intp(x.shape[1])
    mean = np.add.reduce(x, axis=1, keepdims=True)
    np.true_divide(mean, n, out=mean, casting="unsafe")
    dev = np.subtract(x, mean)
    np.square(dev, out=dev)
    var = np.add.reduce(dev, axis=1)
    np.true_divide(var, n, out=var, casting="unsafe")
    return mean[:, 0], var


def _percentiles(flat: np.ndarray) -> np.ndarray:
    """np.percentile(flat, [5, 50, 95], axis=1).T, bit for bit (numpy's default "linear" method:
    virtual index (n - 1) * q, then numpy's _lerp, float32 difference and float64 interpolation),
    from one np.sort: np.percentile's partition and checks took 130 us an image, the sort takes 8.
    tests/runtime/test_telemetry.py holds it to np.percentile."""
    lo, hi, gamma, upper = _percentile_plan(flat.shape[1])
    ordered = np.sort(flat, axis=1)
    a, b = ordered[:, lo], ordered[:, hi]
    diff = b - a
    return np.where(upper, b - diff * (1 - gamma), a + diff * gamma)


@lru_cache(maxsize=8)
def _grid(h: int, w: int, k: int) -> tuple[np.ndarray, int, int]:
    """Flat indices of every k-th pixel of every k-th row of an h x w image, and the grid's shape."""
    rows, cols = np.arange(0, h, k), np.arange(0, w, k)
    return (rows[:, None] * w + cols[None, :]).ravel(), len(rows), len(cols)


@lru_cache(maxsize=8)
def _percentile_plan(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For n values: the sorted positions each percentile lies between, and its weight (gamma)."""
    virtual = (n - 1) * _Q
    below = np.floor(virtual)
    gamma = virtual - below
    lo = below.astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    lo[virtual >= n - 1] = n - 1
    return lo, hi, gamma, gamma >= 0.5


def confidence_and_margin(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 probability and its margin over the runner-up, per row of N x C probabilities: both fall
    when inputs leave what the model was trained on."""
    top2 = np.sort(probabilities, axis=1)[:, -2:] if probabilities.shape[1] > 1 else \
        np.column_stack([np.zeros(len(probabilities)), probabilities[:, 0]])
    return top2[:, 1], top2[:, 1] - top2[:, 0]
