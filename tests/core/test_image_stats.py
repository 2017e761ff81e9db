"""image_stats: the drift signals move the way a monitor needs (darker -> lower mean and percentiles,
blurred -> lower sharpness, flat -> no spread) and never depend on torch."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edgepipe.core.image_stats import STATS, confidence_and_margin, image_stats


def _scene(seed=0, size=224):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))  # sharp-edged blocks


def test_darker_and_blurred_images_move_their_statistics():
    base = _scene()
    dark = (base * 0.5).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(base).filter(ImageFilter.GaussianBlur(4)))
    s = dict(zip(STATS, image_stats(np.stack([base, dark, blurred])).T))
    assert s["mean"][1] == pytest.approx(s["mean"][0] / 2, rel=0.02) and s["p95"][1] < s["p95"][0]
    assert s["sharpness"][2] < s["sharpness"][0] / 3
    assert abs(s["mean"][2] - s["mean"][0]) < 3  # a blur keeps the brightness


def test_a_flat_image_has_no_spread_and_the_columns_are_in_order():
    flat = np.full((1, 64, 64, 3), 100, np.uint8)
    s = image_stats(flat)[0]
    assert s.shape == (len(STATS),) and s[STATS.index("std")] == 0 and s[STATS.index("sharpness")] == 0
    assert s[STATS.index("p05")] == s[STATS.index("p50")] == s[STATS.index("p95")] == pytest.approx(100, abs=0.5)


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="N x H x W x 3 uint8"):
        image_stats(np.zeros((64, 64, 3), np.uint8))


def test_confidence_and_margin():
    conf, margin = confidence_and_margin(np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]))
    assert conf.tolist() == pytest.approx([0.7, 0.5]) and margin.tolist() == pytest.approx([0.5, 0.0])
