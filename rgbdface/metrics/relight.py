"""Measures of a relit photo against its input, on the effective shading s = log(relit luminance / input luminance).

Relighting multiplies the photo by a shading ratio, so s is that ratio as the viewer sees it.
Two failure modes of relighting from low-resolution depth show in it:

- **blockiness**: facets of a depth map upsampled without smoothing give piecewise constant
  normals, so s has steps. Measured as the total variation of s over that of s smoothed with
  a Gaussian of sigma 2 px, summed over neighbouring pixel pairs inside the changed region
  (pulled in by 3 sigma from its outline, so that the smoothing never reads outside it).
  A smooth s gives about 1; steps give more.
- **edge ratio**: a relit region that ends in a hard cut has its full effect right at its
  outline. Measured as mean |s| in the band within 2 px of the changed region's outline over
  mean |s| in the region's core (the pixels at least half the region's inradius away from
  the outline). A hard cut gives about 1 (or more); a feathered region gives about 0.

The changed region is where the relit image differs from the input by at least one 8-bit
level in some channel, closed over gaps up to CLOSE_PX wide, its largest connected part with
holes filled: pixels inside that cannot change (black strokes, where any gain keeps 0) or
whose ratio rounds to 1 (where the new shading crosses the old) make no outlines of their own. Luminance is Rec. 709
luma of the 8-bit values plus one level (so that black pixels have a finite log).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SMOOTH_SIGMA = 2.0  # px, the Gaussian that blockiness compares against
BAND_PX = 2.0  # px, the band inside the outline that the edge ratio reads
CLOSE_PX = 9  # px, gaps of unchanged pixels this wide inside the changed region are closed
LUMA = np.array([0.2126, 0.7152, 0.0722])


@dataclass
class RelightMeasures:
    blockiness: float
    edge_ratio: float
    changed_px: int

    def to_dict(self) -> dict:
        return {"blockiness": self.blockiness, "edge_ratio": self.edge_ratio, "changed_px": self.changed_px}


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of 8-bit RGB [H, W, 3] (or gray [H, W]) plus one level, float64."""
    x = np.asarray(rgb, np.float64)
    return (x @ LUMA if x.ndim == 3 else x) + 1.0


def effective_shading(image: np.ndarray, relit: np.ndarray) -> np.ndarray:
    """s = log(relit luminance / input luminance), [H, W] float64."""
    return np.log(luminance(relit) / luminance(image))


def changed_region(image: np.ndarray, relit: np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels that changed by >= 1 level, closed, the largest connected part, holes filled."""
    import cv2
    from scipy.ndimage import binary_fill_holes

    diff = np.abs(np.asarray(relit, np.float64) - np.asarray(image, np.float64))
    changed = (diff.max(axis=-1) if diff.ndim == 3 else diff) >= 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (CLOSE_PX, CLOSE_PX))
    changed = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(changed.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(changed.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return binary_fill_holes(labels == biggest)


def _inside_distance(region: np.ndarray) -> np.ndarray:
    """Distance (px) of each region pixel to the nearest pixel outside it (the image border counts as outside)."""
    import cv2

    padded = np.pad(region, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def _total_variation(x: np.ndarray, inside: np.ndarray) -> float:
    dx = np.abs(np.diff(x, axis=1))[inside[:, 1:] & inside[:, :-1]].sum()
    dy = np.abs(np.diff(x, axis=0))[inside[1:] & inside[:-1]].sum()
    return float(dx + dy)


def relight_measures(image: np.ndarray, relit: np.ndarray) -> RelightMeasures:
    """Blockiness and edge ratio of `relit` against `image` (uint8, same shape; see the module doc).

    A region too small to measure (no core, or nothing inside after pulling in) gives NaN.
    """
    import cv2

    image, relit = np.asarray(image), np.asarray(relit)
    if image.shape != relit.shape:
        raise ValueError(f"relit {relit.shape} and input {image.shape} must have the same shape")
    s = effective_shading(image, relit)
    region = changed_region(image, relit)
    dist = _inside_distance(region)
    nan = float("nan")
    if not region.any():
        return RelightMeasures(nan, nan, 0)

    inner = dist > 3 * SMOOTH_SIGMA
    smoothed = cv2.GaussianBlur(s, (0, 0), SMOOTH_SIGMA)
    tv_smooth = _total_variation(smoothed, inner)
    blockiness = _total_variation(s, inner) / tv_smooth if tv_smooth > 0 else nan

    band = region & (dist <= BAND_PX)
    core = dist >= 0.5 * dist.max()
    core_mean = np.abs(s[core]).mean() if core.any() else 0.0
    edge_ratio = float(np.abs(s[band]).mean() / core_mean) if core_mean > 0 and band.any() else nan
    return RelightMeasures(float(blockiness), edge_ratio, int(region.sum()))
