"""Relighting from depth (paper §5.4): a smooth surface from the depth, the photo's own shading
estimated and divided out, new shading multiplied in, faded into the untouched image.

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

`relight` (what the command runs):

1. **Surface** (`relight_surface`). The depth, from any source (estimate-depth's 16-bit PNG,
   prep-depth's ground truth, any .npy), is turned into a height in pixels and smoothed at
   the image's resolution with an image-guided filter (a guided filter weighted by the
   depth's valid pixels, guided by the photo's gray levels, radius `smooth`, by default
   1/12 of the face's width, after a Gaussian of half that: a depth map upsampled from a
   model's 64 px shows facets about 1/30 of the face wide, which would make blocky normals). Holes in the face region (the mouth) are
   filled. With region 'head', the height is extended to the head around the face (hair,
   ears, neck: the person mask of MediaPipe's selfie segmentation, cut a third of a face
   below the chin): there the surface is the head's silhouette inflated to a rounded shape
   (height sqrt(t (2ρ - t)) at distance t inside the outline, ρ = the region's inradius, the
   distance map blurred by ρ/4 to round off its creases),
   plus the face's offset from that shape, extended smoothly outward. Normals are the depth's
   finite-difference normals, smoothed again at half that radius.
2. **The photo's own shading**: ambient + max(0, n · l) of the photo's own light l at intensity 1
   (a light of intensity 1 is as strong as the photo's own), with the given ambient. Its direction
   is given (`photo_light`) or estimated (`estimate_light`): the face's linear luminance fitted
   by albedo × (ambient + max(0, n · l)) for horizontal directions l up to PHOTO_LIGHT_MAX degrees
   off the view axis, robustly (outliers such as brows and beard dropped). Only the horizontal
   angle is fitted: a face's albedo is close to symmetric left to right, but from brow to chin it
   varies more than the shading does (brows, eyes, lips, beard), so a vertical angle fitted the
   same way follows the albedo (on studio renders of real photos it found light from 55-80
   degrees above for a level light). Relighting with the photo's own light gives the photo back,
   and a photo lit from the side relit from the front gets brighter on its dark side instead of
   darker on its lit side. (A second-order spherical-harmonic fit of the luminance, used as the
   shading before, also took in the albedo's darker features, eye sockets, brows and beard, and
   relighting lightened them: on studio renders relit from one light to another it scored
   0.2-1.3 dB below this model.)
3. **New shading**: ambient (gray or coloured) + Σ intensity · colour · max(0, n · l) +
   an environment's irradiance (second-order spherical harmonics of an equirectangular image).
4. **Ratio**: relit = image × new shading / original shading (the albedo is kept; relighting
   with the photo's own light changes little). The ratio is in linear light; it multiplies the
   encoded (sRGB) values as ratio^(1/2.2), one gain per pixel whatever its level. Darkening
   fades out in near-black parts of the photo (a 2 px local mean below DARK_LEVELS[1] of 255,
   none below DARK_LEVELS[0]): there it would move a pixel by a few 8-bit levels, an invisible
   change that rounding to 8 bits cannot give its ratio (at level 10 one level is 10 %), so it
   would only add noise; brightening applies at every level. It fades in
   by `weight`: 0 on
   the region's outline, rising as a smoothstep to 1 at `feather` pixels inside it (by
   default FEATHER_FRACTION of the face's width). Outside the region the image is untouched.

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
SMOOTH_FRACTION = 1 / 12  # surface smoothing radius, as a fraction of the face's width
FEATHER_FRACTION = 0.15  # feather width, as a fraction of the face's width
GUIDE_EPS = 0.02  # guided filter: gray-level variance (0..1 scale) below which the guide is ignored
SHADING_FLOOR = 0.2  # the original shading is kept above this fraction of its median (no division blow-up)
HEAD_BELOW_CHIN = 1 / 3  # head region: how far below the face's lowest pixel it reaches, in face heights
HEAD_SIDE = 0.6  # head region: how far beside the face it reaches, in face widths
HEAD_SIDE_DOWN = 0.75  # head region: beside the face it reaches down to this fraction of the face's height (hair, ears; not shoulders)
NECK_LEVEL = 0.35  # head region below the face: only pixels at least this fraction of the face's median gray level
NECK_WIDTH = 0.7  # head region below the face: this many face widths wide, centred under it
DARK_LEVELS = (8.0, 24.0)  # 8-bit levels: darkening fades out where the photo's local mean is below the second, none below the first
DARK_SIGMA = 2.0  # px, the Gaussian of that local mean
REGIONS = ("face", "head")
PHOTO_LIGHT_MAX = 45  # degrees: the photo's light is estimated within this horizontal angle of the view axis
PHOTO_LIGHT_PIXELS = 20000  # the photo's light is fitted on at most this many face pixels (an even subsample)
ENV_SIZE = (64, 128)  # environment maps are reduced to this (H, W) before projection


# --------------------------------------------------------------------------- lights


def _colour(values, what: str) -> tuple[float, float, float]:
    c = tuple(float(v) for v in values)
    if len(c) != 3 or not all(math.isfinite(v) and v >= 0 for v in c):
        raise ValueError(f"{what} {values!r}: expected three numbers R, G, B >= 0")
    return c


@dataclass(frozen=True)
class Light:
    """A directional light: `direction` (x right, y up, z toward the viewer; any length), intensity and RGB colour."""

    direction: tuple[float, float, float]
    intensity: float = 1.0
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)

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
        object.__setattr__(self, "color", _colour(self.color, "light colour"))

    @property
    def unit(self) -> np.ndarray:
        d = np.asarray(self.direction, np.float64)
        return d / np.linalg.norm(d)

    @property
    def rgb(self) -> np.ndarray:
        """intensity × colour, [3]."""
        return self.intensity * np.asarray(self.color, np.float64)

    @classmethod
    def parse(cls, text: str) -> "Light":
        """'X,Y,Z', 'X,Y,Z,I', 'X,Y,Z,R,G,B' or 'X,Y,Z,I,R,G,B' → Light; ValueError naming `text` otherwise.

        I = intensity (default 1), R,G,B = colour (default 1,1,1; e.g. 1,0.8,0.6 is warm).
        """
        parts = [p.strip() for p in str(text).split(",")]
        hint = "expected X,Y,Z[,INTENSITY][,R,G,B], e.g. 1,0,1 or 1,0,1,1.2,1,0.8,0.6 (x right, y up, z toward the viewer)"
        if len(parts) not in (3, 4, 6, 7):
            raise ValueError(f"light {text!r}: {hint}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"light {text!r}: not all numbers; {hint}") from None
        intensity = values[3] if len(values) in (4, 7) else 1.0
        color = tuple(values[-3:]) if len(values) >= 6 else (1.0, 1.0, 1.0)
        try:
            return cls(tuple(values[:3]), intensity, color)
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


def parse_ambient(text: str) -> tuple[float, float, float]:
    """'A' (gray) or 'R,G,B' → an RGB ambient; ValueError naming `text` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"ambient {text!r}: expected one number >= 0 (gray) or three, R,G,B (e.g. 0.3 or 0.3,0.3,0.4)")
    return tuple(values * 3) if len(values) == 1 else tuple(values)


def _ambient_rgb(ambient) -> np.ndarray:
    a = np.broadcast_to(np.asarray(ambient, np.float64), (3,)).copy()
    if not (np.isfinite(a).all() and (a >= 0).all()):
        raise ValueError(f"ambient={ambient!r}: expected a number >= 0 (or three, R, G, B)")
    return a


def orbit_lights(frames: int, light: Light | None = None, cone: float = 60.0) -> list[Light]:
    """`frames` lights circling the view axis once, `cone` degrees off it, starting above and turning toward
    the image's right; intensity and colour from `light` (default white, 1)."""
    if frames < 1:
        raise ValueError(f"orbit frames={frames}: expected a number >= 1")
    base = light or Light((0, 0, 1))
    c = math.radians(cone)
    out = []
    for k in range(frames):
        a = 2 * math.pi * k / frames
        out.append(Light((math.sin(c) * math.sin(a), math.sin(c) * math.cos(a), math.cos(c)), base.intensity, base.color))
    return out


# --------------------------------------------------------------------------- results


@dataclass
class RelightResult:
    """The relit image and the layers that made it.

    image:    [H, W, 3] (or [H, W]) in the input's dtype; unchanged where `weight` is 0.
    normals:  [H, W, 3] float32 unit normals (x right, y up, z toward the viewer); 0 outside `region`.
    shading:  [H, W, 3] float32 linear RGB, the new shading (ambient + lights + environment; may exceed 1);
              0 outside `region`.
    original_shading: [H, W] float32, the photo's own shading as estimated (1 = the scale of a unit light);
              0 outside `region`.
    albedo:   [H, W, 3] float32 linear RGB, image / original shading; 0 outside `region`.
    weight:   [H, W] float32 in [0, 1], how much of the relighting each pixel takes (the feather).
    region:   [H, W] bool, where the surface is (face or head); `weight` > 0 only inside it.
    valid:    [H, W] bool, where the given depth is > 0.
    depth_scale: the pixels-per-depth-unit factor the surface used.
    feather:  the feather width in pixels.
    photo_light: [3] unit direction of the photo's own light as estimated (or as given; NaN when `original`
              was given without `photo_light`).
    """

    image: np.ndarray
    normals: np.ndarray
    shading: np.ndarray
    original_shading: np.ndarray
    albedo: np.ndarray
    weight: np.ndarray
    region: np.ndarray
    valid: np.ndarray
    depth_scale: float
    feather: float
    photo_light: np.ndarray


@dataclass
class Surface:
    """A relightable surface at an image's resolution.

    height:  [H, W] float64 pixels toward the viewer (0 outside `region`).
    normals: [H, W, 3] float32 unit normals; 0 outside `region`.
    region:  [H, W] bool; face: [H, W] bool, where the given depth was valid.
    depth_scale: pixels per depth unit; face_width: the face's width in pixels.
    """

    height: np.ndarray
    normals: np.ndarray
    region: np.ndarray
    face: np.ndarray
    depth_scale: float
    face_width: float


# --------------------------------------------------------------------------- normals


def _width(mask: np.ndarray) -> float:
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[-1] - cols[0] + 1) if len(cols) else 0.0


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
    """Lambertian shading [H, W] float32: ambient + Σ intensity · max(0, n · l̂) (colours ignored).

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


def shade_rgb(normals, lights: Iterable[LightLike], ambient=DEFAULT_AMBIENT, env_sh: np.ndarray | None = None) -> np.ndarray:
    """Coloured shading [H, W, 3] float64: ambient + Σ intensity · colour · max(0, n · l̂) + environment irradiance."""
    n = to_numpy(normals).astype(np.float64)
    out = np.broadcast_to(_ambient_rgb(ambient), n.shape[:2] + (3,)).copy()
    for light in map(as_light, lights):
        out += np.maximum(0.0, n @ light.unit)[..., None] * light.rgb
    if exists(env_sh):
        out += sh_irradiance(n, env_sh)
    return out


def smooth_depth(depth, sigma: float) -> np.ndarray:
    """Gaussian-smooth depth [H, W] inside its valid region (depth > 0), by normalised convolution.

    Invalid pixels neither contribute nor change (they stay 0).
    """
    d = to_numpy(depth).astype(np.float64)
    if sigma <= 0:
        return d
    valid = (d > 0) & np.isfinite(d)
    return np.where(valid, _masked_blur(d, valid, sigma), 0.0)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur; a wide one (sigma >= 8 px) runs on a copy reduced by sigma // 4 and comes back by
    bicubic interpolation (smooth to the first derivative, so normals taken from it show no grid)."""
    import cv2

    k = int(sigma // 4)
    if k < 2 or min(x.shape[:2]) < 8 * k:
        return cv2.GaussianBlur(x, (0, 0), sigma)
    h, w = x.shape[:2]
    small = cv2.resize(x, (max(1, round(w / k)), max(1, round(h / k))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / k)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _masked_blur(x: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of x over the pixels of `mask` only (normalised convolution); NaN-free, 0 where no mask is near."""
    w = _blur(mask.astype(np.float64), sigma)
    num = _blur(np.where(mask, x, 0.0), sigma)
    return np.where(w > 1e-6, num / np.maximum(w, 1e-6), 0.0)


def guided_smooth(p: np.ndarray, weight: np.ndarray, guide: np.ndarray, radius: float, eps: float = GUIDE_EPS) -> np.ndarray:
    """Edge-aware smoothing of `p` [H, W] guided by `guide` [H, W] (0..1): He et al.'s guided filter, every local
    mean weighted by `weight` (pixels with weight 0 are not read), box windows of half-size `radius`.

    Where the guide is flat (local variance << eps) this is a weighted box mean; across strong guide
    edges the output follows the guide's edges instead of blurring over them.
    """
    import cv2

    r = max(1, int(round(radius)))
    k = (2 * r + 1, 2 * r + 1)
    box = lambda x: cv2.boxFilter(x, cv2.CV_64F, k, normalize=True, borderType=cv2.BORDER_REFLECT)
    w = weight.astype(np.float64)
    wsum = np.maximum(box(w), 1e-12)
    mean = lambda x: box(w * x) / wsum
    i, p = guide.astype(np.float64), np.where(weight > 0, p, 0.0).astype(np.float64)
    mi, mp = mean(i), mean(p)
    a = (mean(i * p) - mi * mp) / (mean(i * i) - mi * mi + eps)
    b = mp - a * mi
    return box(a) * i + box(b)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def inside_distance(region: np.ndarray) -> np.ndarray:
    """[H, W] float32: each region pixel's Euclidean distance to the nearest pixel outside it (the image
    border counts as outside: a pixel on the border is at distance 1); 0 outside the region."""
    import cv2

    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def feather_weight(region: np.ndarray, feather: float) -> np.ndarray:
    """[H, W] float32 in [0, 1]: 0 outside `region`, smoothstep(distance to its outline / feather) inside.

    A pixel next to the outline is at distance 1, so even it takes a little; `feather` <= 0 gives a hard 0/1 mask.
    """
    region = np.asarray(region, bool)
    if feather <= 0:
        return region.astype(np.float32)
    return _smoothstep((inside_distance(region) - 0.5) / feather).astype(np.float32) * region


# --------------------------------------------------------------------------- spherical harmonics

SH_IRRADIANCE = np.array([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5)  # Â_l per coefficient (Ramamoorthi & Hanrahan 2001)


def sh_basis(directions: np.ndarray) -> np.ndarray:
    """The nine real spherical harmonics of degree <= 2 at unit directions [..., 3] (x, y, z) → [..., 9]."""
    x, y, z = (directions[..., k].astype(np.float64) for k in range(3))
    return np.stack([
        np.full_like(x, 0.282095),
        0.488603 * y, 0.488603 * z, 0.488603 * x,
        1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1), 1.092548 * x * z, 0.546274 * (x * x - y * y),
    ], axis=-1)


def equirect_directions(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions [h, w, 3] of an equirectangular image's pixel centres, and each pixel's solid angle [h, w].

    Rows run from straight up (+y) to straight down; the centre column is the direction the camera looks
    (-z, behind the subject), columns to its right turn toward +x (the image's right), and the left and
    right edges are the direction toward the viewer (+z, behind the camera).
    """
    lat = (0.5 - (np.arange(h) + 0.5) / h) * math.pi  # +pi/2 at the top
    lon = ((np.arange(w) + 0.5) / w - 0.5) * 2 * math.pi  # 0 at the centre column
    lat, lon = np.meshgrid(lat, lon, indexing="ij")
    d = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), -np.cos(lat) * np.cos(lon)], -1)
    solid = np.cos(lat) * (math.pi / h) * (2 * math.pi / w)
    return d, solid


def env_to_sh(env: np.ndarray) -> np.ndarray:
    """An equirectangular environment [H, 2H, 3] of linear radiance → its spherical-harmonic coefficients [9, 3]."""
    import cv2

    env = np.asarray(env, np.float64)
    if env.ndim == 2:
        env = np.repeat(env[..., None], 3, axis=-1)
    if env.ndim != 3 or env.shape[-1] != 3 or env.shape[1] != 2 * env.shape[0]:
        raise ValueError(f"environment is {env.shape[1] if env.ndim > 1 else '?'}x{env.shape[0]}: an equirectangular image is twice as wide as it is high (2:1)")
    if not np.isfinite(env).all() or (env < 0).any():
        raise ValueError("environment has negative, NaN or infinite values; expected radiance >= 0")
    if env.shape[0] > ENV_SIZE[0]:
        env = cv2.resize(env, ENV_SIZE[::-1], interpolation=cv2.INTER_AREA)
    d, solid = equirect_directions(*env.shape[:2])
    basis = sh_basis(d)  # [h, w, 9]
    return np.einsum("hwk,hw,hwc->kc", basis, solid, env)


def sh_irradiance(normals: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Diffuse shading [..., 3] from environment coefficients [9, 3]: irradiance / π, so that a uniform
    environment of radiance L shades every normal L."""
    return sh_basis(normals) @ (coeffs * SH_IRRADIANCE[:, None]) / math.pi


# --------------------------------------------------------------------------- colour


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float64), 0.0, None)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


LUMA = np.array([0.2126, 0.7152, 0.0722])
GAMMA = 2.2  # the sRGB curve as one power law, for gains applied to encoded values


# --------------------------------------------------------------------------- 1. surface


def head_region(person: np.ndarray, face: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """[H, W] bool: the head around a face region: the person mask (probability > 0.5) near the face (up to
    a face height above it; HEAD_SIDE face widths beside it, down to HEAD_SIDE_DOWN of its height; below
    it the neck, NECK_WIDTH face widths wide and HEAD_BELOW_CHIN face heights down, where `image` is given
    only its pixels at least NECK_LEVEL of the face's median gray level, so not a dark collar), the part
    connected to the face, with the face itself and every hole filled."""
    import cv2
    from scipy.ndimage import binary_fill_holes

    rows, cols = np.flatnonzero(face.any(axis=1)), np.flatnonzero(face.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    fh, fw = y1 - y0 + 1, x1 - x0 + 1
    near = np.zeros_like(face)
    near[max(0, int(y0 - fh)): int(y0 + HEAD_SIDE_DOWN * fh) + 1, max(0, int(x0 - HEAD_SIDE * fw)): int(x1 + HEAD_SIDE * fw) + 1] = True
    near[int(y0): int(y1) + 1, int(x0): int(x1) + 1] = True  # beside the jaw only what lies over the face's columns
    neck = int(NECK_WIDTH * fw / 2)
    cx = (x0 + x1) // 2
    below = np.zeros_like(face)
    below[int(y1): int(y1 + HEAD_BELOW_CHIN * fh) + 1, max(0, cx - neck): cx + neck + 1] = True  # the neck, not the shoulders
    if exists(image):  # and not dark clothing in front of it: skin there is at least NECK_LEVEL of the face's median gray level
        img = to_numpy(image).astype(np.float64)
        gray = img @ LUMA if img.ndim == 3 else img
        below &= gray >= NECK_LEVEL * np.median(gray[face])
    near |= below
    head = ((np.asarray(person) > 0.5) & near) | face
    # a morphological opening drops thin strands and specks; the face keeps the part it belongs to
    k = max(3, int(fw * 0.04) | 1)
    head = cv2.morphologyEx(head.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool) | face
    n, labels = cv2.connectedComponents(head.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[face])
    return binary_fill_holes(np.isin(labels, keep[keep > 0]))


def relight_surface(
    depth,
    image=None,
    head=None,
    smooth: float | None = None,
    depth_scale: float | None = None,
    relief: float = DEFAULT_RELIEF,
) -> Surface:
    """A smooth surface at the image's resolution from a depth map [H, W] (larger = farther, 0 = none).

    image: [H, W, 3] uint8 (or [H, W]) guide for the edge-aware smoothing; None = plain smoothing.
    head: [H, W] bool, a region around the face to extend the surface to (`head_region`); None = the
    face region only (the valid depth with its holes filled).
    smooth: smoothing radius in pixels; default SMOOTH_FRACTION of the face's width; 0 = none.
    """
    from scipy.ndimage import binary_fill_holes

    d = to_numpy(depth).astype(np.float64)
    valid = (d > 0) & np.isfinite(d)
    s = relief_depth_scale(d, valid, relief) if depth_scale is None else float(depth_scale)
    width = _width(valid)
    radius = width * SMOOTH_FRACTION if smooth is None else float(smooth)

    # everything below happens inside the box around the face (and head), with room for the widest blur
    head = np.asarray(head, bool) if exists(head) else None
    box = _box(valid | head if exists(head) else valid, pad=int(0.8 * width + 2 * radius) + 8)
    full, d, valid = valid, d[box], valid[box]
    image = to_numpy(image)[box] if exists(image) else None
    head = head[box] if exists(head) else None

    # height in pixels toward the viewer, smoothed edge-aware inside the valid region
    h = np.where(valid, -s * (d - d[valid].min()), 0.0)
    if radius > 0:
        if exists(image):
            img = to_numpy(image).astype(np.float64)
            gray = (img @ LUMA if img.ndim == 3 else img) / (255.0 if img.max() > 1 else 1.0)
            h = np.where(valid, guided_smooth(_masked_blur(h, valid, radius / 2), valid, gray, radius), 0.0)
        else:
            h = np.where(valid, _masked_blur(h, valid, radius), 0.0)

    # the region: the face with its holes, or the head around it
    face_filled = binary_fill_holes(valid)
    region = face_filled | (head if exists(head) else False)
    if exists(head):
        # inflated silhouette + the face's offset from it, extended smoothly outward
        t = inside_distance(region).astype(np.float64)
        rho = max(float(t.max()), 1.0)
        t = np.clip(_blur(t, max(rho / 4, 1.0)), 0, rho)  # round off the creases a distance map has along its ridges
        blob = np.sqrt(t * (2 * rho - t))
        offset = h - blob
        ramp = _smoothstep(inside_distance(valid) / max(2 * radius, 1.0)) * valid
        far = _masked_blur(offset, valid, max(width / 4, 1.0))
        h = blob + ramp * offset + (1 - ramp) * far
    else:
        fill = ~valid & face_filled
        if fill.any():
            h = np.where(fill, _masked_blur(h, valid, max(width / 8, 1.0)), h)
    h = np.where(region, h, 0.0)

    # normals of the height (depth = -height, in pixels), smoothed at half the radius
    n = normals_from_depth(-h, region, depth_scale=1.0).astype(np.float64)
    if radius > 0:
        n = np.stack([_masked_blur(n[..., k], region, radius / 2) for k in range(3)], -1)
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
        n[~region] = 0.0
    return Surface(height=_paste(h, box, full.shape), normals=_paste(n.astype(np.float32), box, full.shape),
                   region=_paste(region, box, full.shape), face=full, depth_scale=s, face_width=width)


def _box(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The bounding box of `mask`, grown by `pad` pixels on each side and cut to the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return slice(max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)), slice(max(0, cols[0] - pad), min(w, cols[-1] + pad + 1))


def _paste(x: np.ndarray, box: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """x (the box's contents) in a zero array of the full `shape` (plus x's trailing axes)."""
    out = np.zeros(tuple(shape) + x.shape[2:], x.dtype)
    out[box] = x
    return out


# --------------------------------------------------------------------------- 2. the photo's shading


def estimate_light(luminance: np.ndarray, normals: np.ndarray, mask: np.ndarray, ambient: float, iterations: int = 3) -> np.ndarray:
    """The photo's light direction [3] (unit; x right, y up, z toward the viewer): the horizontal direction
    l = (sin a, 0, cos a), |a| <= PHOTO_LIGHT_MAX degrees, whose albedo × (ambient + max(0, n · l)) fits the
    linear luminance over `mask` best in least squares (one albedo per direction), dropping outliers (residual
    > 2.5 robust standard deviations) between iterations, and nearly black or clipped pixels."""
    y = np.asarray(luminance, np.float64)
    use = np.asarray(mask, bool) & (y > 0.005) & (y < 0.98)
    if use.sum() < 9:
        use = np.asarray(mask, bool)
    idx = np.flatnonzero(use)
    idx = idx[:: max(1, len(idx) // PHOTO_LIGHT_PIXELS)]
    if len(idx) == 0:
        return np.array([0.0, 0.0, 1.0])
    target = y.ravel()[idx]
    n = np.asarray(normals, np.float64).reshape(-1, 3)[idx]
    angles = np.radians(np.arange(-PHOTO_LIGHT_MAX, PHOTO_LIGHT_MAX + 1, 1.0))
    dirs = np.stack([np.sin(angles), np.zeros_like(angles), np.cos(angles)], -1)  # [D, 3]
    model = ambient + np.maximum(0.0, n @ dirs.T)  # [N, D]
    keep = np.ones(len(target), bool)
    best = int(np.argmin(np.abs(angles)))
    for _ in range(iterations):
        m, t = model[keep], target[keep]
        albedo = (m * t[:, None]).sum(0) / np.maximum((m * m).sum(0), 1e-12)  # [D]
        cost = ((t[:, None] - albedo * m) ** 2).sum(0)
        best = int(np.argmin(cost + 1e-9 * max(cost.max(), 1e-12) * np.abs(angles)))  # of equal fits (a flat photo), the most frontal
        resid = np.abs(target - albedo[best] * model[:, best])
        mad = np.median(resid[keep])
        if mad <= 0:
            break
        keep = resid < 2.5 * mad / 0.6745
    return dirs[best]


def original_shading(luminance: np.ndarray, surface: Surface, ambient: float, light=None) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] float64 the photo's own shading over the surface's region, ambient + max(0, n · l), and the photo's
    light direction l [3] (`light`, or estimated by `estimate_light`; see the module doc, step 2)."""
    n = surface.normals.astype(np.float64)
    own = estimate_light(luminance, n, surface.face, ambient) if light is None else as_light(light).unit
    out = ambient + np.maximum(0.0, n @ own)
    floor = SHADING_FLOOR * max(float(np.median(out[surface.face])), 1e-6)
    return np.where(surface.region, np.maximum(out, floor), 0.0), own


# --------------------------------------------------------------------------- the pipeline


def check_inputs(image: np.ndarray, depth: np.ndarray, region: str = "face", feather: float | None = None) -> None:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)):
        raise ValueError(f"image must be [H, W, 3] or [H, W], got shape {image.shape}")
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if image.shape[:2] != depth.shape:
        h, w = image.shape[:2]
        raise ValueError(f"depth is {depth.shape[1]}x{depth.shape[0]} but the image is {w}x{h}; they must match")
    if not np.isfinite(depth).all():
        raise ValueError("depth has NaN or infinite values; use 0 for pixels without depth")
    if not (depth > 0).any():
        raise ValueError("depth is 0 everywhere: no pixel to relight; pass the depth map of this image")
    if region not in REGIONS:
        raise ValueError(f"region={region!r}: expected one of {', '.join(REGIONS)}")
    if exists(feather) and not (math.isfinite(feather) and feather >= 0):
        raise ValueError(f"feather={feather!r}: expected a number of pixels >= 0")


def relight(
    image,
    depth,
    lights: Iterable[LightLike],
    ambient=DEFAULT_AMBIENT,
    env_sh: np.ndarray | None = None,
    region: str = "face",
    person=None,
    feather: float | None = None,
    depth_scale: float | None = None,
    relief: float = DEFAULT_RELIEF,
    smooth: float | None = None,
    surface: Surface | None = None,
    original: np.ndarray | None = None,
    photo_light: LightLike | None = None,
) -> RelightResult:
    """Relight `image` with lights (and an environment) using the surface of `depth` (see the module doc).

    image: [H, W, 3] or [H, W]; uint8 (0..255) or float (0..1), sRGB-encoded.
    depth: [H, W], larger = farther, 0 = no depth.
    ambient: gray (a number) or RGB (three numbers).
    env_sh: [9, 3] environment coefficients (`env_to_sh`), added to the lights.
    region: 'face' (the depth's region, holes filled) or 'head' (extended to the head: needs `person`,
        an [H, W] person mask or probability, e.g. `rgbdface.data.face.person_mask`).
    feather: the fade-in width in pixels (default FEATHER_FRACTION of the face's width; 0 = a hard cut).
    smooth: the surface's smoothing radius in pixels (default SMOOTH_FRACTION of the face's width; 0 = none).
    surface: a surface already built from this depth (`relight_surface`), e.g. for many lights.
    original: the photo's shading from an earlier call on the same surface with the same ambient
        (`RelightResult.original_shading`), so that it is not estimated again.
    photo_light: the direction of the photo's own light, when known (x, y, z or a Light); default
        estimated (`estimate_light`). Ignored with `original`.
    """
    # 1. Check inputs, build the surface
    image, depth = to_numpy(image), to_numpy(depth)
    check_inputs(image, depth, region, feather)
    lights = [as_light(x) for x in lights]
    amb = _ambient_rgb(ambient)
    if region == "head" and not exists(person) and not exists(surface):
        raise ValueError("region='head' needs `person`, a person mask of the image (rgbdface.data.face.person_mask)")
    if surface is None:
        head = head_region(person, (depth > 0), image) if region == "head" else None
        surface = relight_surface(depth, image, head=head, smooth=smooth, depth_scale=depth_scale, relief=relief)
    feather_px = surface.face_width * FEATHER_FRACTION if feather is None else float(feather)
    shape = depth.shape
    box = _box(surface.region, pad=1)  # nothing changes outside the region: work inside its box
    surface = Surface(height=surface.height[box], normals=surface.normals[box], region=surface.region[box], face=surface.face[box],
                      depth_scale=surface.depth_scale, face_width=surface.face_width)
    inside = surface.region
    weight = feather_weight(inside, feather_px)  # [h, w]

    # 2. The photo's own shading, in linear light
    top = 255.0 if image.dtype == np.uint8 else 1.0
    rgb = (image[..., None] if image.ndim == 2 else image)[box]
    lin = srgb_to_linear(rgb.astype(np.float64) / top)  # [h, w, C]
    lum = lin @ LUMA if lin.shape[-1] == 3 else lin[..., 0]
    if original is None:
        before, own = original_shading(lum, surface, float(amb.mean()), photo_light)  # [h, w], [3]
    else:
        before = np.asarray(original, np.float64)[box]
        own = as_light(photo_light).unit if exists(photo_light) else np.full(3, np.nan)

    # 3. New shading
    after = shade_rgb(surface.normals, lights, amb, env_sh)  # [h, w, 3]
    after[~inside] = 0.0

    # 4. Ratio, faded in by the feather
    ratio = np.where(inside[..., None], after / np.maximum(before, 1e-6)[..., None], 1.0)  # [h, w, 3]
    if lin.shape[-1] == 1:
        ratio = ratio @ LUMA[:, None]
    # applied to the encoded values as ratio^(1/2.2): the same gain in linear light for the sRGB curve's power
    # part, and one gain for every pixel whatever its level, so the shading change keeps no image texture
    gain = np.power(ratio, 1.0 / GAMMA)
    gain = np.where(gain < 1, 1.0 + dark_fade(rgb, top)[..., None] * (gain - 1.0), gain)
    lit = np.clip(rgb.astype(np.float64) * (1.0 + weight[..., None] * (gain - 1.0)), 0.0, top)
    if image.dtype == np.uint8:
        lit = lit.round()
    out = image.copy()
    out[box] = np.where(weight[..., None] > 0, lit, rgb).astype(image.dtype).reshape(out[box].shape)
    albedo = np.where(inside[..., None], lin / np.maximum(before, 1e-6)[..., None], 0.0)
    if albedo.shape[-1] == 1:
        albedo = np.repeat(albedo, 3, -1)
    return RelightResult(image=out, normals=_paste(surface.normals, box, shape), shading=_paste(after.astype(np.float32), box, shape),
                         original_shading=_paste(before.astype(np.float32), box, shape), albedo=_paste(albedo.astype(np.float32), box, shape),
                         weight=_paste(weight, box, shape), region=_paste(inside, box, shape), valid=_paste(surface.face, box, shape),
                         depth_scale=surface.depth_scale, feather=feather_px, photo_light=own)


def dark_fade(rgb: np.ndarray, top: float = 255.0) -> np.ndarray:
    """[H, W] float64 in [0, 1]: how much of a darkening each pixel of `rgb` ([H, W, C], 0..top) takes: a
    smoothstep of its local mean gray level (a DARK_SIGMA Gaussian, in 8-bit levels) from DARK_LEVELS[0] to DARK_LEVELS[1]."""
    import cv2

    x = rgb.astype(np.float64) * (255.0 / top)
    gray = x @ LUMA if x.shape[-1] == 3 else x[..., 0]
    lo, hi = DARK_LEVELS
    return _smoothstep((cv2.GaussianBlur(gray, (0, 0), DARK_SIGMA) - lo) / (hi - lo))


# --------------------------------------------------------------------------- file encodings


def normals_to_rgb(normals: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The usual normal-map encoding, uint8 RGB = (n + 1) / 2 · 255; black outside `valid`."""
    n = to_numpy(normals).astype(np.float64)
    rgb = ((n + 1.0) / 2.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    if exists(valid):
        rgb[~to_numpy(valid).astype(bool)] = 0
    return rgb


def shading_to_gray(shading: np.ndarray) -> np.ndarray:
    """A shading layer as uint8, linear values clipped to 0..1 (1 = a unit light's full strength): gray [H, W]
    when it has no colour (one channel, or three equal ones), RGB otherwise."""
    s = to_numpy(shading).astype(np.float64)
    if s.ndim == 3 and np.allclose(s, s[..., :1]):
        s = s[..., 0]
    return (np.clip(s, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def albedo_to_rgb(albedo: np.ndarray) -> np.ndarray:
    """An albedo layer (linear RGB) as uint8 sRGB, clipped to 0..1."""
    return (np.clip(linear_to_srgb(to_numpy(albedo)), 0.0, 1.0) * 255.0).round().astype(np.uint8)
