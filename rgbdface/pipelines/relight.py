"""Relighting from depth (paper §5.4): normals from depth, a diffuse shading layer, multiplied with the image.

Coordinates. Normals and light directions share one frame: x to the image's right,
y up, z toward the viewer. A light direction points from the surface *toward* the
light, so (0, 0, 1) is a frontal light, (1, 0, 0) a light from the right and
(0, 1, 0) one from above.

Camera. Normals come from finite differences of the depth map under an orthographic
camera: pixel (row v, column u) is the surface point x = u, y = -v, z = -depth · s, with
depth larger = farther (the project's convention for both ground truth and predictions).
`s` (`depth_scale`) converts depth units into pixels. Relative depth has no known
scale, so by default `s` is chosen from an assumed relief: the valid region's depth
range (max - min) spans `relief` times the region's width in pixels. relief = 0.5 is a
hemisphere (a sphere's visible depth range is half its width), close to a face seen
from the front. Pass `depth_scale` to set `s` directly, e.g. 1 when depth is in pixels.

Arrays may be numpy arrays or torch tensors (any device); results are numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import numpy as np

from rgbdface.data.surface import DEFAULT_RELIEF, relief_depth_scale, to_numpy
from rgbdface.utils import exists

DEFAULT_AMBIENT = 0.25


@dataclass(frozen=True)
class Light:
    """A directional light: `direction` (x right, y up, z toward the viewer; any length) and intensity."""

    direction: tuple[float, float, float]
    intensity: float = 1.0

    def __post_init__(self):
        d = tuple(float(v) for v in self.direction)
        if len(d) != 3 or not all(math.isfinite(v) for v in d):
            raise ValueError(f"light direction {self.direction!r}: expected three finite numbers x, y, z")
        if math.hypot(*d) == 0:
            raise ValueError("light direction (0, 0, 0) has no direction; give x, y, z not all zero")
        if not (math.isfinite(self.intensity) and self.intensity >= 0):
            raise ValueError(f"light intensity {self.intensity!r}: expected a number >= 0")
        object.__setattr__(self, "direction", d)
        object.__setattr__(self, "intensity", float(self.intensity))

    @property
    def unit(self) -> np.ndarray:
        d = np.asarray(self.direction, np.float64)
        return d / np.linalg.norm(d)

    @classmethod
    def parse(cls, text: str) -> "Light":
        """'X,Y,Z' or 'X,Y,Z,I' (I = intensity, default 1) → Light; ValueError naming `text` otherwise."""
        parts = [p.strip() for p in str(text).split(",")]
        hint = "expected X,Y,Z or X,Y,Z,INTENSITY, e.g. 1,0,1 (x right, y up, z toward the viewer)"
        if len(parts) not in (3, 4):
            raise ValueError(f"light {text!r}: {hint}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"light {text!r}: not all numbers; {hint}") from None
        try:
            return cls(tuple(values[:3]), values[3] if len(values) == 4 else 1.0)
        except ValueError as e:
            raise ValueError(f"light {text!r}: {e}") from None


LightLike = Union[Light, Sequence[float]]


def as_light(x: LightLike) -> Light:
    """A Light from a Light, (x, y, z) or (x, y, z, intensity)."""
    if isinstance(x, Light):
        return x
    x = tuple(x)
    if len(x) == 3:
        return Light(x)
    if len(x) == 4:
        return Light(x[:3], x[3])
    raise ValueError(f"light {x!r}: expected (x, y, z) or (x, y, z, intensity)")


@dataclass
class RelightResult:
    """The relit image and the layers that made it.

    image:   [H, W, 3] (or [H, W]) in the input's dtype; unchanged outside `valid`.
    normals: [H, W, 3] float32 unit normals (x right, y up, z toward the viewer); 0 outside `valid`.
    shading: [H, W] float32, ambient + Σ intensity · max(0, n·l) inside `valid` (may exceed 1); 0 outside.
    valid:   [H, W] bool, where depth > 0.
    depth_scale: the pixels-per-depth-unit factor the normals used.
    """

    image: np.ndarray
    normals: np.ndarray
    shading: np.ndarray
    valid: np.ndarray
    depth_scale: float


def _derivative(d: np.ndarray, valid: np.ndarray, axis: int) -> np.ndarray:
    """d(depth)/d(index) along `axis`: central where both neighbours are valid, one-sided where one is, else 0.

    Only valid neighbours are read, so nothing leaks across invalid pixels or the image border.
    """
    dp = np.pad(d, 1, mode="edge")
    vp = np.pad(valid, 1, mode="constant", constant_values=False)
    inner = (slice(1, -1), slice(1, -1))
    fwd = [slice(1, -1), slice(1, -1)]
    bwd = [slice(1, -1), slice(1, -1)]
    fwd[axis] = slice(2, None)
    bwd[axis] = slice(0, -2)
    fwd, bwd = tuple(fwd), tuple(bwd)
    has_f = vp[fwd] & valid
    has_b = vp[bwd] & valid
    centre = dp[inner]
    out = np.zeros_like(d)
    both = has_f & has_b
    out[both] = (dp[fwd][both] - dp[bwd][both]) / 2.0
    only_f = has_f & ~has_b
    out[only_f] = dp[fwd][only_f] - centre[only_f]
    only_b = has_b & ~has_f
    out[only_b] = centre[only_b] - dp[bwd][only_b]
    return out


def normals_from_depth(
    depth,
    valid=None,
    depth_scale: float | None = None,
    relief: float = DEFAULT_RELIEF,
) -> np.ndarray:
    """Unit surface normals [H, W, 3] float32 from a depth map [H, W] (larger = farther).

    valid: [H, W] bool, default depth > 0. Outside it the normals are 0.
    depth_scale: pixels per depth unit; default from `relief` (see the module docstring).
    Derivatives are central differences, one-sided at the valid region's border, and use
    valid neighbours only. With z = -depth · s toward the viewer, n ∝ (s ∂d/∂u, -s ∂d/∂v, 1).
    """
    d = to_numpy(depth).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {d.shape}")
    valid = (d > 0) & np.isfinite(d) if valid is None else to_numpy(valid).astype(bool)
    if valid.shape != d.shape:
        raise ValueError(f"valid {valid.shape} and depth {d.shape} must have the same shape")
    s = relief_depth_scale(d, valid, relief) if depth_scale is None else float(depth_scale)
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"depth_scale={depth_scale!r}: expected a finite number >= 0")

    d = np.where(valid, d, 0.0)
    du = _derivative(d, valid, axis=1)  # along columns (image right)
    dv = _derivative(d, valid, axis=0)  # along rows (image down)
    n = np.stack([s * du, -s * dv, np.ones_like(d)], axis=-1)  # [H, W, 3]
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[~valid] = 0.0
    return n.astype(np.float32)


def shade(
    normals,
    lights: Iterable[LightLike],
    ambient: float = DEFAULT_AMBIENT,
    valid=None,
) -> np.ndarray:
    """Lambertian shading [H, W] float32: ambient + Σ intensity · max(0, n · l̂).

    normals: [H, W, 3] unit normals; lights: Light, (x, y, z) or (x, y, z, intensity) each;
    valid: optional [H, W] bool, shading is 0 outside it.
    """
    n = to_numpy(normals).astype(np.float64)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise ValueError(f"normals must be [H, W, 3], got shape {n.shape}")
    if not (math.isfinite(ambient) and ambient >= 0):
        raise ValueError(f"ambient={ambient!r}: expected a number >= 0")
    shading = np.full(n.shape[:2], float(ambient))
    for light in map(as_light, lights):
        shading += light.intensity * np.maximum(0.0, n @ light.unit)
    if exists(valid):
        shading[~to_numpy(valid).astype(bool)] = 0.0
    return shading.astype(np.float32)


def check_inputs(image: np.ndarray, depth: np.ndarray) -> None:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)):
        raise ValueError(f"image must be [H, W, 3] or [H, W], got shape {image.shape}")
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if image.shape[:2] != depth.shape:
        h, w = image.shape[:2]
        raise ValueError(f"depth is {depth.shape[1]}x{depth.shape[0]} but the image is {w}x{h}; they must match")


def smooth_depth(depth, sigma: float) -> np.ndarray:
    """Gaussian-smooth depth [H, W] inside its valid region (depth > 0), by normalised convolution.

    Depth estimated at a low resolution and upsampled is piecewise linear, so its normals
    are piecewise constant; smoothing with sigma ≈ the upsampling factor removes the facets.
    Invalid pixels neither contribute nor change (they stay 0).
    """
    import cv2

    d = to_numpy(depth).astype(np.float64)
    if sigma <= 0:
        return d
    valid = (d > 0) & np.isfinite(d)
    w = cv2.GaussianBlur(valid.astype(np.float64), (0, 0), sigma)
    num = cv2.GaussianBlur(np.where(valid, d, 0.0), (0, 0), sigma)
    return np.where(valid, num / np.maximum(w, 1e-12), 0.0)


def relight(
    image,
    depth,
    lights: Iterable[LightLike],
    ambient: float = DEFAULT_AMBIENT,
    depth_scale: float | None = None,
    relief: float = DEFAULT_RELIEF,
    smooth: float = 0.0,
) -> RelightResult:
    """Relight `image` with directional lights using the normals of `depth` (paper §5.4).

    image: [H, W, 3] or [H, W]; uint8 (0..255) or float (0..1).
    depth: [H, W], larger = farther, 0 = no depth; the valid region is depth > 0.
    smooth: Gaussian sigma in pixels applied to the depth first (`smooth_depth`; 0 = none).
    Inside it, image × shading (clipped to the input's range); outside, the image is unchanged.
    """
    # 1. Check inputs
    image, depth = to_numpy(image), to_numpy(depth)
    check_inputs(image, depth)
    if smooth > 0:
        depth = smooth_depth(depth, smooth)
    lights = [as_light(x) for x in lights]
    valid = (depth > 0) & np.isfinite(depth)  # [H, W]

    # 2. Normals and shading
    s = relief_depth_scale(depth, valid, relief) if depth_scale is None else float(depth_scale)
    normals = normals_from_depth(depth, valid, depth_scale=s)  # [H, W, 3]
    shading = shade(normals, lights, ambient, valid)  # [H, W]

    # 3. Multiply inside the valid region, in the image's own range
    top = 255.0 if image.dtype == np.uint8 else 1.0
    factor = shading[..., None] if image.ndim == 3 else shading
    lit = np.clip(image.astype(np.float64) * factor, 0.0, top)
    if image.dtype == np.uint8:
        lit = lit.round()
    mask = valid[..., None] if image.ndim == 3 else valid
    out = np.where(mask, lit, image).astype(image.dtype)
    return RelightResult(image=out, normals=normals, shading=shading, valid=valid, depth_scale=s)


def normals_to_rgb(normals: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The usual normal-map encoding, uint8 RGB = (n + 1) / 2 · 255; black outside `valid`."""
    n = to_numpy(normals).astype(np.float64)
    rgb = ((n + 1.0) / 2.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    if exists(valid):
        rgb[~to_numpy(valid).astype(bool)] = 0
    return rgb


def shading_to_gray(shading: np.ndarray) -> np.ndarray:
    """The shading layer as uint8 gray, clipped to 0..1 (1 = the image's own brightness)."""
    return (np.clip(to_numpy(shading), 0.0, 1.0) * 255.0).round().astype(np.uint8)
