"""Find faces and crop them to a square: the one face-crop helper every command uses.

MediaPipe (``mediapipe==0.10.21``) runs offline: its wheel carries the face
detection, face-mesh and selfie-segmentation models.

Coordinates are continuous pixel coordinates: pixel ``(i, j)`` covers
``[j, j+1] x [i, i+1]`` and its centre is ``(j + 0.5, i + 0.5)``; ``x`` runs
right and ``y`` down. MediaPipe's normalised landmarks times the image size are
already in this convention.

A crop box is a square ``(x0, y0, x1, y1)`` in source pixels that may extend past
the image border. The crop maps it onto ``[0, S] x [0, S]``; the area beyond the
source border is filled by **edge replication** (repeating the outermost source
pixels), so the crop has no artificial black bands.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgbdface.utils import InputError

DEFAULT_SIZE = 512
# Each side of the face box grows by this fraction of the box size: the crop is
# (1 + 2 * margin) face boxes wide, so the face takes ~45% of the crop width (HDTF-like framing).
DEFAULT_MARGIN = 0.6
# MediaPipe's detection box runs from the brows to the chin; shifting the crop up
# by this fraction of the box keeps forehead and hair in frame.
CROP_LIFT = 0.1
MIN_FACE_PX = 32  # smaller faces carry too little detail to fit a mesh to
MIN_IMAGE_PX = 32
MAX_IMAGE_PIXELS = 120_000_000  # ~ a 12000x10000 photo; beyond that, ask the user to resize
DETECT_MAX_SIDE = 2048  # detection and mesh run on a copy halved until it fits this
MAX_FACES = 8
LANDMARK_CROP = 384  # face_landmarks fits the mesh on a crop this size around each face
NUM_LANDMARKS = 478


class NoFaceError(InputError):
    """No usable face in an image."""


@dataclass
class FaceBox:
    """A detected face: its box in source pixels and the detector's confidence in [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass
class FaceCrop:
    """A square face crop and how it maps back onto its source image.

    image:       [S, S, 3] uint8, the crop; beyond the source border, edge replication.
    box:         square crop box (x0, y0, x1, y1) in source pixels; may extend past the border.
    source_size: (H, W) of the source image.
    landmarks:   [478, 3] float32 MediaPipe face-mesh landmarks in crop pixels, or None.
                 x, y as above; z in the same pixel scale, relative to the face centre,
                 smaller = nearer the camera (MediaPipe's convention).
    """

    image: np.ndarray
    box: tuple[float, float, float, float]
    source_size: tuple[int, int]
    landmarks: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel."""
        return self.size / (self.box[2] - self.box[0])

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Source-pixel points [..., 2 or 3] → crop pixels (z, if given, scales like x)."""
        return box_to_crop_coords(points, self.box, self.size)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Crop-pixel points [..., 2 or 3] → source pixels."""
        p = np.array(points, dtype=np.float64, copy=True)
        s = 1.0 / self.scale
        p[..., 0] = p[..., 0] * s + self.box[0]
        p[..., 1] = p[..., 1] * s + self.box[1]
        if p.shape[-1] > 2:
            p[..., 2:] *= s
        return p.astype(np.float32)


# --- MediaPipe objects: created once per process and thread ---------------------------

_MP_OBJECTS: dict[tuple, Any] = {}
_MP_LOCK = threading.Lock()


def _mediapipe():
    # Quiet MediaPipe's C++ logging before the first import (it writes to stderr).
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import mediapipe as mp

    return mp


def _mp_object(kind: str, **params) -> Any:
    """A cached MediaPipe solution, one per process and thread (a graph is not thread-safe).

    Worker processes must be started with the 'spawn' method (as rgbdface's own pools
    are): MediaPipe's native threads do not survive fork, so a process forked after
    MediaPipe ran in its parent gets a clear error here instead of a crash.
    """
    pid = os.getpid()
    key = (pid, threading.get_ident(), kind, tuple(sorted(params.items())))
    obj = _MP_OBJECTS.get(key)
    if obj is None:
        if any(k[0] != pid for k in _MP_OBJECTS):
            raise RuntimeError(
                "MediaPipe already ran in the parent of this forked process and cannot run here; "
                "start worker processes with the 'spawn' method"
            )
        mp = _mediapipe()
        with _MP_LOCK, _quiet_native_stderr():
            if kind == "detection":
                obj = mp.solutions.face_detection.FaceDetection(**params)
            elif kind == "mesh":
                obj = mp.solutions.face_mesh.FaceMesh(**params)
            elif kind == "selfie":
                obj = mp.solutions.selfie_segmentation.SelfieSegmentation(**params)
            else:
                raise ValueError(f"unknown MediaPipe solution {kind!r}")
            # the first run loads the TFLite delegate, which also prints to the native stderr
            obj.process(np.zeros((64, 48, 3), np.uint8))
            _MP_OBJECTS[key] = obj
    return obj


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what MediaPipe's C++ side prints straight to file descriptor 2 (start-up notes,
    per-graph warnings) while it runs. Python-level errors still raise as usual."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # stderr replaced (e.g. captured): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected a uint8 RGB array [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_PX:
        raise InputError(f"{name}: image is only {w}x{h} pixels; pass a photo at least {MIN_IMAGE_PX} px on each side")
    if h * w > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: image is {w}x{h} pixels, too large; resize it below {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
    return np.ascontiguousarray(image)


def _halve(image: np.ndarray) -> np.ndarray:
    """Exact 2x2 box-filter downscale (odd sizes padded by edge replication)."""
    h, w = image.shape[:2]
    pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (image.ndim - 2)
    x = np.pad(image, pad, mode="edge").astype(np.float32)
    x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, *x.shape[2:]).mean(axis=(1, 3))
    if np.issubdtype(image.dtype, np.integer):
        x = np.round(x)
    return x.astype(image.dtype)


def _for_detection(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A copy no larger than DETECT_MAX_SIDE and the factor back to source pixels."""
    factor = 1.0
    while max(image.shape[:2]) > DETECT_MAX_SIDE:
        image = _halve(image)
        factor *= 2.0
    return np.ascontiguousarray(image), factor


# --- detection and landmarks --------------------------------------------------------


def detect_faces(image: np.ndarray, min_score: float = 0.5) -> list[FaceBox]:
    """MediaPipe face detection on a uint8 RGB image [H, W, 3]; boxes in source pixels, largest first.

    The full-range model runs first (faces near and far); the short-range model
    is tried when it finds nothing (very close, large faces).
    """
    image = _check_image(image)
    small, factor = _for_detection(image)
    h, w = small.shape[:2]
    faces: list[FaceBox] = []
    for model in (1, 0):
        detector = _mp_object("detection", model_selection=model, min_detection_confidence=min_score)
        with _quiet_native_stderr():
            result = detector.process(small)
        for det in result.detections or []:
            b = det.location_data.relative_bounding_box
            x0, y0 = b.xmin * w * factor, b.ymin * h * factor
            x1, y1 = x0 + b.width * w * factor, y0 + b.height * h * factor
            faces.append(FaceBox(float(x0), float(y0), float(x1), float(y1), float(det.score[0])))
        if faces:
            break
    return sorted(faces, key=lambda f: f.area, reverse=True)


def face_landmarks(image: np.ndarray, max_faces: int = MAX_FACES) -> list[np.ndarray]:
    """MediaPipe Face Mesh (with iris refinement): [478, 3] float32 per face, largest first.

    x, y in source pixels; z in the same pixel scale (MediaPipe scales z like x),
    relative to the face centre, smaller = nearer the camera. Each face found by
    `detect_faces` is cropped first, so small faces in large photos are fitted too.
    """
    image = _check_image(image)
    faces = []
    for box in detect_faces(image)[:max_faces]:
        crop = FaceCrop(crop_box_to(image, square_box(box), LANDMARK_CROP), square_box(box), image.shape[:2])
        found = _mesh(crop.image)
        if found:
            faces.append(crop.to_source(_nearest_centre(found, crop.image)))
    return faces


def person_mask(image: np.ndarray) -> np.ndarray:
    """MediaPipe selfie segmentation: [H, W] float32 in [0, 1], the probability that a pixel shows a person.

    The general (square-input) model of the wheel; it covers the head with its hair, the
    neck and the body, and runs on a copy no larger than DETECT_MAX_SIDE.
    """
    import cv2

    image = _check_image(image)
    small, factor = _for_detection(image)
    seg = _mp_object("selfie", model_selection=0)
    with _quiet_native_stderr():
        prob = seg.process(small).segmentation_mask
    prob = np.clip(np.asarray(prob, np.float32), 0.0, 1.0)
    if factor > 1:
        prob = cv2.resize(prob, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return prob


def _mesh(image: np.ndarray) -> list[np.ndarray]:
    """MediaPipe Face Mesh straight on an image (best on a face-centred crop); [478, 3] per face."""
    h, w = image.shape[:2]
    mesh = _mp_object("mesh", static_image_mode=True, max_num_faces=2, refine_landmarks=True, min_detection_confidence=0.5)
    with _quiet_native_stderr():
        result = mesh.process(np.ascontiguousarray(image))
    out = []
    for face in result.multi_face_landmarks or []:
        lm = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64) * (w, h, w)
        out.append(lm.astype(np.float32))
    return out


def _nearest_centre(faces: list[np.ndarray], image: np.ndarray) -> np.ndarray:
    centre = np.array(image.shape[1::-1], np.float32) / 2.0
    return min(faces, key=lambda lm: float(np.linalg.norm(lm[:, :2].mean(0) - centre)))


# --- crop boxes ------------------------------------------------------------------------


def square_box(face: FaceBox, margin: float = DEFAULT_MARGIN) -> tuple[float, float, float, float]:
    """The square crop box around a detected face: (1 + 2 * margin) face sizes wide, lifted by CROP_LIFT."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    side = max(face.width, face.height) * (1.0 + 2.0 * margin)
    cx = (face.x0 + face.x1) / 2.0
    cy = (face.y0 + face.y1) / 2.0 - CROP_LIFT * face.height
    return (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)


def box_to_crop_coords(points: np.ndarray, box, size: int) -> np.ndarray:
    """Source-pixel points [..., 2 or 3] → pixels of a size x size crop of `box` (z scales like x)."""
    x0, y0, x1, y1 = box
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    p = np.array(points, dtype=np.float64, copy=True)
    p[..., 0] = (p[..., 0] - x0) * sx
    p[..., 1] = (p[..., 1] - y0) * sy
    if p.shape[-1] > 2:
        p[..., 2:] *= sx
    return p.astype(np.float32)


def _affine(box, size: int) -> np.ndarray:
    """The 2x3 matrix from source pixel indices to crop pixel indices (OpenCV's pixel-centre convention)."""
    x0, y0, x1, y1 = box
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    # continuous u = (x - x0) * s, with index = continuous - 0.5 on both sides
    return np.array([[sx, 0.0, sx * (0.5 - x0) - 0.5], [0.0, sy, sy * (0.5 - y0) - 0.5]], dtype=np.float64)


def _warp(values: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int], flags: int, border: int, fill) -> np.ndarray:
    """cv2.warpAffine for any number of channels and the dtypes OpenCV handles."""
    import cv2

    src = np.ascontiguousarray(values)
    orig_dtype = src.dtype
    if src.dtype == bool:
        src = src.astype(np.uint8)
    elif src.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        src = src.astype(np.float64 if src.dtype.itemsize > 4 else np.float32)
    h, w = out_hw
    extra = src.shape[2:]
    flat = src.reshape(src.shape[0], src.shape[1], -1)
    chunks = []
    for c in range(0, flat.shape[2], 4):  # OpenCV warps at most 4 channels at once
        part = np.ascontiguousarray(flat[..., c : c + 4])
        n = part.shape[2]
        val = (fill,) * 4 if np.isscalar(fill) else tuple(np.ravel(fill)[c : c + 4]) + (0,) * 4
        out = cv2.warpAffine(part, matrix, (w, h), flags=flags, borderMode=border, borderValue=val[:4])
        chunks.append(out.reshape(h, w, n))
    out = np.concatenate(chunks, axis=2).reshape(h, w, *extra)
    return out.astype(orig_dtype) if orig_dtype == bool else out


def crop_box_to(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int = DEFAULT_SIZE,
    interpolation: str = "linear",
    border: str = "replicate",
) -> np.ndarray:
    """Crop any array [H, W, ...] to `box` and resample it to [size, size, ...].

    interpolation: "linear" (images; large downscales are box-filtered first, no aliasing)
                   or "nearest" (labels, masks, depth with holes).
    border:        "replicate" (edge replication) or "constant" (zeros) beyond the source.
    """
    import cv2

    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    if border not in ("replicate", "constant"):
        raise ValueError(f"border must be 'replicate' or 'constant', got {border!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"crop box must have x1 > x0 and y1 > y0, got {box}")
    image = np.asarray(image)
    if interpolation == "linear":
        # halve (exactly) while the crop shrinks the image more than 2x
        while size / (x1 - x0) < 0.5 and min(image.shape[:2]) >= 2:
            image = _halve(image)
            x0, y0, x1, y1 = x0 / 2, y0 / 2, x1 / 2, y1 / 2
    flags = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    return _warp(image, _affine((x0, y0, x1, y1), size), (size, size), flags, mode, 0)


def crop_face(
    image: np.ndarray,
    size: int = DEFAULT_SIZE,
    margin: float = DEFAULT_MARGIN,
    which: str | int = "largest",
    name: str = "image",
    with_landmarks: bool = False,
    faces: list[FaceBox] | None = None,
) -> FaceCrop:
    """Detect a face in a uint8 RGB image [H, W, 3] and crop a size x size square around it.

    which: "largest" (default) or the index of a face in `detect_faces` order (largest first).
    with_landmarks: also fit the face mesh on the crop (478 landmarks in crop pixels).
    faces: `detect_faces(image)` when the caller already has it (no second detection).
    Raises NoFaceError (naming `name`) when there is no such face, InputError when it is too small.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    image = _check_image(image, name)
    faces = detect_faces(image) if faces is None else faces
    if not faces:
        raise NoFaceError(f"{name}: no face found; pass a photo with a visible face")
    index = 0 if which == "largest" else int(which)
    if not 0 <= index < len(faces):
        raise NoFaceError(f"{name}: face {index} requested but {len(faces)} found")
    face = faces[index]
    if min(face.width, face.height) < MIN_FACE_PX:
        raise InputError(f"{name}: the face is only {min(face.width, face.height):.0f} px across; pass a photo where it is at least {MIN_FACE_PX} px")
    box = square_box(face, margin)
    crop = FaceCrop(crop_box_to(image, box, size), box, (image.shape[0], image.shape[1]))
    if with_landmarks:
        crop.landmarks = crop_landmarks(crop.image, name)
    return crop


def crop_landmarks(crop_image: np.ndarray, name: str = "image") -> np.ndarray:
    """Face-mesh landmarks [478, 3] of the face nearest the centre of a face crop, in crop pixels."""
    faces = _mesh(_check_image(crop_image, name))
    if not faces:
        raise NoFaceError(f"{name}: a face was found but the face mesh could not be fitted; pass a clearer, more frontal photo")
    return _nearest_centre(faces, crop_image)


def paste_back(values: np.ndarray, crop: FaceCrop, fill: Any = 0, interpolation: str = "linear") -> np.ndarray:
    """Map a crop-space array [S, S, ...] back onto the source frame [H, W, ...]; `fill` outside the crop."""
    import cv2

    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    values = np.asarray(values)
    if values.shape[0] != values.shape[1]:
        raise ValueError(f"values must be a square crop [S, S, ...], got {tuple(values.shape)}")
    h, w = crop.source_size
    flags = (cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST) | cv2.WARP_INVERSE_MAP
    return _warp(values, _affine(crop.box, values.shape[0]), (h, w), flags, cv2.BORDER_CONSTANT, fill)

