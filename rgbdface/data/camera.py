"""The assumed camera that turns MediaPipe landmarks into metric camera-space depth.

MediaPipe gives each landmark's image position (x, y) and a relative depth z in
the same pixel scale, but no camera or metric scale. prep-depth assumes:

- **Camera:** a pinhole looking along +Z at the square crop, principal point at
  the crop centre, focal length ``FOCAL_FACTOR * S`` pixels for an S x S crop
  (a ~28 degree field of view across the crop, like a portrait lens).
- **Scale:** the distance between the centres of the two eyes (each the midpoint
  of its eye corners) is ``EYE_DISTANCE_MM`` (63 mm, the adult mean
  interpupillary distance), measured in 3-D on the landmarks, so turning the head
  does not change the scale.
- **Depth:** with ``mm = EYE_DISTANCE_MM / eye distance in pixels``, the face
  centre (MediaPipe's z = 0) lies at ``Z0 = f * mm``, and each landmark at
  ``Z = Z0 + z * mm`` (z < 0 is nearer). Each landmark's X, Y follow from the
  pinhole, so projecting the 3-D mesh gives back exactly its image position.

Depth maps hold Z, the camera-space depth along the optical axis (not the ray
length), in millimetres; depth PNGs store ``round(Z / DEPTH_UNIT_MM)`` as uint16
(0.1 mm per unit, up to 6.55 m), with 0 = no depth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rgbdface.data import mesh

FOCAL_FACTOR = 2.0  # focal length in crop widths
EYE_DISTANCE_MM = 63.0
DEPTH_UNIT_MM = 0.1  # one step of a uint16 depth PNG
MAX_DEPTH_MM = 65535 * DEPTH_UNIT_MM


@dataclass
class Camera:
    """Pinhole intrinsics in pixels of an image `width` x `height` (continuous pixel coordinates)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def for_crop(cls, size: int) -> "Camera":
        f = FOCAL_FACTOR * size
        return cls(f, f, size / 2.0, size / 2.0, size, size)

    def project(self, points_mm: np.ndarray) -> np.ndarray:
        """Camera-space points [N, 3] (mm) → pixels [N, 3] as (u, v, Z)."""
        p = np.asarray(points_mm, np.float64)
        z = p[:, 2]
        return np.stack([self.fx * p[:, 0] / z + self.cx, self.fy * p[:, 1] / z + self.cy, z], 1)

    def unproject(self, uvz: np.ndarray) -> np.ndarray:
        """Pixels with depth [N, 3] (u, v, Z) → camera-space points [N, 3] (mm)."""
        p = np.asarray(uvz, np.float64)
        z = p[:, 2]
        return np.stack([(p[:, 0] - self.cx) * z / self.fx, (p[:, 1] - self.cy) * z / self.fy, z], 1)

    def to_dict(self) -> dict:
        return asdict(self)


def eye_distance_px(landmarks: np.ndarray) -> float:
    """3-D distance between the eye centres (midpoints of the eye corners), in landmark pixels."""
    right = landmarks[list(mesh.RIGHT_EYE_CORNERS)].mean(0)
    left = landmarks[list(mesh.LEFT_EYE_CORNERS)].mean(0)
    return float(np.linalg.norm(right - left))


def landmarks_to_camera(landmarks: np.ndarray, camera: Camera) -> np.ndarray:
    """MediaPipe landmarks [N, 3] in crop pixels → camera-space points [N, 3] in mm."""
    lm = np.asarray(landmarks, np.float64)
    eye_px = eye_distance_px(lm)
    if eye_px <= 1e-6:
        raise ValueError("degenerate landmarks: the eyes coincide")
    mm_per_px = EYE_DISTANCE_MM / eye_px
    z0 = camera.fx * mm_per_px
    depth = z0 + lm[:, 2] * mm_per_px
    if depth.min() <= 0:
        raise ValueError("landmarks put part of the face behind the camera")
    return camera.unproject(np.stack([lm[:, 0], lm[:, 1], depth], 1))


def depth_to_u16(depth_mm: np.ndarray) -> np.ndarray:
    """Depth in mm (0 = none) → uint16 in DEPTH_UNIT_MM steps, rounded to nearest; raises if beyond the range."""
    d = np.asarray(depth_mm, np.float32)
    if d.max(initial=0) > MAX_DEPTH_MM:
        raise ValueError(f"depth {d.max():.0f} mm exceeds the 16-bit range ({MAX_DEPTH_MM:.0f} mm)")
    steps = d * np.float32(1.0 / DEPTH_UNIT_MM)  # float32 holds 0..65535 in 0.1 mm steps to well under a step
    return np.rint(steps, out=steps).astype(np.uint16)
