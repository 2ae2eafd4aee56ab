"""sRGB ↔ CIE L*a*b* (D65 white, 2° observer), in NumPy.

sRGB values are 0..255 (uint8 or float). The transfer curve is the sRGB standard's
(linear below 0.04045), the RGB → XYZ matrix is sRGB's (ITU-R BT.709 primaries, D65),
and XYZ → L*a*b* is CIE 1976 with the D65 reference white.
"""

from __future__ import annotations

import numpy as np

WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
_EPS = (6.0 / 29.0) ** 3  # below it L*a*b*'s cube root turns into a line


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB [..., 3] (0..255) → L*a*b* [..., 3], float64 (L* 0..100)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = lin @ XYZ_FROM_RGB.T / WHITE_D65
    f = np.where(xyz > _EPS, np.cbrt(xyz), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """L*a*b* [..., 3] → sRGB [..., 3] as uint8 (colours outside the sRGB gamut are clipped per channel)."""
    lab = np.asarray(lab, np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], -1)
    xyz = np.where(f > 6.0 / 29.0, f ** 3, 3 * (6.0 / 29.0) ** 2 * (f - 4.0 / 29.0)) * WHITE_D65
    lin = np.clip(xyz @ RGB_FROM_XYZ.T, 0.0, 1.0)
    c = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)
