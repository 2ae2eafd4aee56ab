"""sRGB ↔ CIE L*a*b* (rgbdface.data.colour) against published values and scikit-image."""

import numpy as np
import pytest

from rgbdface.data.colour import lab_to_srgb, srgb_to_lab


@pytest.mark.parametrize("rgb, lab", [
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((255, 0, 0), (53.24, 80.09, 67.20)),  # the sRGB primaries in L*a*b* (D65)
    ((0, 255, 0), (87.73, -86.18, 83.18)),
    ((0, 0, 255), (32.30, 79.19, -107.86)),
    ((128, 128, 128), (53.59, 0.0, 0.0)),
])
def test_published_values(rgb, lab):
    assert srgb_to_lab(np.array(rgb, np.uint8)) == pytest.approx(lab, abs=0.01)


def test_round_trip_and_scikit_image():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    lab = srgb_to_lab(rgb)
    assert lab.shape == rgb.shape and lab.dtype == np.float64
    assert np.abs(lab - rgb2lab(rgb / 255.0)).max() < 1e-3
    back = lab_to_srgb(lab)
    assert back.dtype == np.uint8 and np.array_equal(back, rgb)


def test_out_of_gamut_is_clipped():
    out = lab_to_srgb(np.array([[50.0, 200.0, 0.0], [150.0, 0.0, 0.0], [-10.0, 0.0, 0.0]]))
    assert out.dtype == np.uint8
    assert tuple(out[1]) == (255, 255, 255) and tuple(out[2]) == (0, 0, 0)
    assert out[0, 0] == 255 and out[0, 1] == 0  # far too red: red saturates, green is cut
