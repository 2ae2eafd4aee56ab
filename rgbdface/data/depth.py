"""Face depth and face-skin mask from fitted face-mesh landmarks (paper supp. §7.3).

The fitted mesh (MediaPipe's 478 landmarks, lifted to millimetres by the assumed
camera of `camera.py`) is rasterised with a z-buffer into:

- **depth**: camera-space Z in mm over the face mesh with its eye openings closed
  (fans from the iris centres), 0 elsewhere: background, hair, neck and the mouth
  opening have no depth;
- **mask**: the face skin, i.e. pixels where a face-mesh triangle is the visible
  surface: it leaves out the eyes and the mouth opening, and everything outside the
  face outline. Every mask pixel has depth; the eyes have depth but no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbdface.data import mesh
from rgbdface.data.camera import Camera, landmarks_to_camera
from rgbdface.data.raster import rasterize


@dataclass
class FaceDepth:
    """depth: [S, S] float32 mm (0 = none); mask: [S, S] bool face skin;
    vertices: [478, 3] float32 camera-space mm; camera: the assumed crop camera."""

    depth: np.ndarray
    mask: np.ndarray
    vertices: np.ndarray
    camera: Camera


def face_triangles() -> tuple[np.ndarray, int]:
    """Skin triangles followed by the eye fans, and how many of them are skin."""
    skin = mesh.skin_triangles()
    return np.concatenate([skin, mesh.eye_triangles()]), len(skin)


def render_face_depth(landmarks: np.ndarray, size: int) -> FaceDepth:
    """Depth and face-skin mask of an S x S crop from its landmarks [478, 3] (crop pixels, MediaPipe z)."""
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (478, 3):
        raise ValueError(f"landmarks must be [478, 3], got {tuple(lm.shape)}")
    camera = Camera.for_crop(size)
    vertices = landmarks_to_camera(lm, camera)  # [478, 3] mm
    tris, n_skin = face_triangles()
    # project: (u, v) are the landmarks' own image positions, Z the camera depth
    raster = rasterize(np.column_stack([lm[:, :2], vertices[:, 2]]), tris, size, size, with_bary=False)
    mask = raster.face.view(np.uint32) < n_skin  # 0 <= face < n_skin in one pass: empty (-1) reads as 2**32 - 1
    return FaceDepth(raster.depth, mask, vertices.astype(np.float32), camera)
