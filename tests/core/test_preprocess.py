import numpy as np
from PIL import Image

from edgepipe.core.preprocess import PreprocessSpec

SPEC = PreprocessSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_grayscale_is_replicated_to_three_equal_channels():
    gray = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8), "L")
    rgb = SPEC.to_rgb8(gray)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_sixteen_bit_is_scaled_not_clipped():
    a = np.full((40, 40), 65535, np.uint16)
    a[:20] = 32768
    rgb = SPEC.to_rgb8(Image.fromarray(a))
    assert rgb.max() == 255 and 126 <= rgb[0, 0, 0] <= 129


def test_rgba_transparent_pixels_become_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    assert SPEC.to_rgb8(Image.fromarray(rgba, "RGBA")).max() == 0


def test_normalize_matches_formula_and_layout():
    rgb8 = np.full((2, 32, 32, 3), 255, np.uint8)
    rgb8[1] = 0
    x = SPEC.normalize(rgb8)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[1], -1.0)


def test_round_trip_through_dict():
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC
