"""prep-depth as a library: images and videos → a dataset of RGB, depth, mask and landmarks.

`prepare_dataset` runs the whole batch (workers, skipping finished inputs, a summary);
`prepare_input` handles one file. Per frame: face crop (data/face.py) → face-mesh
landmarks → depth and face-skin mask under the assumed camera (data/depth.py) →
optional studio-like renders (data/studio.py) → files and manifest rows (data/manifest.py).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rgbdface.data import manifest
from rgbdface.data.camera import DEPTH_UNIT_MM, depth_to_u16
from rgbdface.data.depth import FaceDepth, face_triangles, render_face_depth
from rgbdface.data.face import (
    DEFAULT_MARGIN,
    DEFAULT_SIZE,
    FaceCrop,
    NoFaceError,
    crop_box_to,
    crop_face,
    crop_landmarks,
    detect_faces,
    square_box,
)
from rgbdface.data.io import IMAGE_SUFFIXES, load_image
from rgbdface.data.video import VIDEO_SUFFIXES
from rgbdface.utils import InputError, atomic_path, exists

MESH_FORMATS = ("ply", "obj", "glb")


@dataclass
class PrepConfig:
    size: int = DEFAULT_SIZE  # crop side in pixels
    margin: float = DEFAULT_MARGIN  # crop margin, in face sizes on each side
    studio_views: int = 0  # studio-like renders per fitted image (videos: per clip, from its first frame)
    all_faces: bool = False  # every face of an image, not just the largest
    export_mesh: str | None = None  # "ply" | "obj" | "glb": the fitted mesh with vertex colours
    wav2vec: Path | None = None  # local wav2vec2 folder for per-frame audio features
    fps: float = 25.0  # video frame rate
    rgb_format: str = "jpg"  # "jpg" (quality 95) or "png"
    identity_from: str = "stem"  # "stem": the file name; "parent": its folder's name
    seed: int = 0  # studio views are drawn from (seed, input)

    def check(self) -> None:
        if self.size < 64:
            raise InputError(f"--size {self.size}: must be at least 64")
        if self.margin < 0:
            raise InputError(f"--margin {self.margin}: must be >= 0")
        if self.studio_views < 0:
            raise InputError(f"--studio-views {self.studio_views}: must be >= 0")
        if exists(self.export_mesh) and self.export_mesh not in MESH_FORMATS:
            raise InputError(f"--export-mesh {self.export_mesh}: expected one of {', '.join(MESH_FORMATS)}")
        if self.fps <= 0:
            raise InputError(f"--fps {self.fps}: must be > 0")
        if self.rgb_format not in ("jpg", "png"):
            raise InputError(f"--rgb-format {self.rgb_format}: expected jpg or png")
        if self.identity_from not in ("stem", "parent"):
            raise InputError(f"--identity-from {self.identity_from}: expected stem or parent")
        if exists(self.wav2vec) and not Path(self.wav2vec).is_dir():
            raise InputError(f"--wav2vec {self.wav2vec}: not a folder; pass a local wav2vec2 model folder")


@dataclass
class InputResult:
    path: str
    status: str  # "done" | "skipped" | "failed"
    samples: int = 0
    frames: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    samples: int = 0
    frames: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "failed": [{"input": p, "error": e} for p, e in self.failed], "samples": self.samples, "frames": self.frames, "seconds": round(self.seconds, 3)}


def input_key(path: Path) -> str:
    """A dataset-unique, readable key for an input: its stem and a short hash of its full path."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(path).stem)
    return f"{stem}-{digest}"


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


# --- writing one sample ----------------------------------------------------------------


def _write_encoded(path: Path, ext: str, img: np.ndarray, params: list[int]) -> None:
    import cv2

    arr = img[..., ::-1] if img.ndim == 3 else img  # OpenCV encodes BGR
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr), params)
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def write_sample(root: Path, clip_dir: str, frame: int, rgb: np.ndarray, depth_mm: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, rgb_format: str) -> dict:
    """Write one sample's files atomically; returns their paths relative to `root`."""
    import cv2

    stem = f"{frame:06d}"
    rel = {
        "rgb": f"{clip_dir}/rgb_{stem}.{rgb_format}",
        "depth": f"{clip_dir}/depth_{stem}.png",
        "mask": f"{clip_dir}/mask_{stem}.png",
        "landmarks": f"{clip_dir}/landmarks_{stem}.npy",
    }
    if rgb_format == "jpg":
        _write_encoded(root / rel["rgb"], ".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        _write_encoded(root / rel["rgb"], ".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    _write_encoded(root / rel["depth"], ".png", depth_to_u16(depth_mm), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    _write_encoded(root / rel["mask"], ".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    with atomic_path(root / rel["landmarks"]) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(landmarks, np.float32), allow_pickle=False)
    return rel


def _row(rel: dict, *, clip: str, frame: int, identity: str, source: str, cfg: PrepConfig, fd: FaceDepth, input_path: Path, box=None, view=None, audio=None, features=None, fps=None) -> dict:
    return {
        "id": f"{clip}/{frame:06d}",
        **rel,
        "identity": identity,
        "clip": clip,
        "frame": frame,
        "source": source,
        "audio": audio,
        "audio_features": features,
        "fps": fps,
        "size": cfg.size,
        "camera": fd.camera.to_dict(),
        "depth_unit_mm": DEPTH_UNIT_MM,
        "input": str(input_path),
        "box": [round(float(v), 3) for v in box] if exists(box) else None,
        "view": view,
    }


def export_mesh(path: Path, fd: FaceDepth, crop: np.ndarray, landmarks: np.ndarray) -> None:
    """The fitted mesh (camera-space mm) with vertex colours sampled from the crop, via trimesh."""
    import trimesh

    s = crop.shape[0]
    ij = np.clip(np.floor(landmarks[:, :2]).astype(int), 0, s - 1)
    colours = np.column_stack([crop[ij[:, 1], ij[:, 0]], np.full(len(ij), 255, np.uint8)])
    tris, _ = face_triangles()
    m = trimesh.Trimesh(vertices=fd.vertices, faces=tris, vertex_colors=colours, process=False)
    with atomic_path(path) as tmp:
        m.export(tmp, file_type=path.suffix[1:])


def _studio_rows(root: Path, key: str, identity: str, crop: FaceCrop, fd: FaceDepth, cfg: PrepConfig, input_path: Path) -> list[dict]:
    from rgbdface.data.studio import random_view, render_view

    rows = []
    seed = int(hashlib.sha1(f"{cfg.seed}:{key}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    clip = f"{key}-studio"
    for k in range(cfg.studio_views):
        view = random_view(rng)
        r = render_view(crop.image, crop.landmarks, fd.vertices, fd.camera, view)
        rel = write_sample(root, clip, k, r.rgb, r.depth, r.mask, r.landmarks, cfg.rgb_format)
        rows.append(_row(rel, clip=clip, frame=k, identity=identity, source="studio", cfg=cfg, fd=fd, input_path=input_path, view=view.to_dict()))
    return rows


# --- one input -------------------------------------------------------------------------


def _identity(path: Path, cfg: PrepConfig) -> str:
    return Path(path).resolve().parent.name if cfg.identity_from == "parent" else Path(path).stem


def prepare_image(path: Path, root: Path, cfg: PrepConfig) -> tuple[list[dict], int]:
    image = load_image(path)
    name = str(path)
    n_faces = len(detect_faces(image)) if cfg.all_faces else 1
    if n_faces == 0:
        raise NoFaceError(f"{name}: no face found; pass a photo with a visible face")
    key, rows = input_key(path), []
    for i in range(n_faces):
        crop = crop_face(image, cfg.size, cfg.margin, which=i, name=name, with_landmarks=True)
        fd = render_face_depth(crop.landmarks, cfg.size)
        clip = key if not cfg.all_faces else f"{key}-f{i}"
        identity = _identity(path, cfg) + (f"-f{i}" if cfg.all_faces else "")
        rel = write_sample(root, clip, 0, crop.image, fd.depth, fd.mask, crop.landmarks, cfg.rgb_format)
        rows.append(_row(rel, clip=clip, frame=0, identity=identity, source="wild", cfg=cfg, fd=fd, input_path=path, box=crop.box))
        if cfg.export_mesh:
            export_mesh(root / clip / f"mesh_000000.{cfg.export_mesh}", fd, crop.image, crop.landmarks)
        rows += _studio_rows(root, clip, identity, crop, fd, cfg, path)
    return rows, 1


def prepare_video(path: Path, root: Path, cfg: PrepConfig) -> tuple[list[dict], int]:
    from rgbdface.data import video

    name = str(path)
    w, _ = video.video_size(path)
    # 1. Face boxes on small frames, then smoothed over time.
    boxes = []
    for small in video.read_frames(path, cfg.fps, width=video.DETECT_WIDTH):
        faces = detect_faces(small)
        k = w / small.shape[1]
        boxes.append(tuple(v * k for v in square_box(faces[0], cfg.margin)) if faces else None)
    if not boxes:
        raise InputError(f"{name}: the video has no frames")
    try:
        boxes = video.smooth_boxes(boxes)
    except ValueError:
        raise NoFaceError(f"{name}: no face found in any frame; pass a video with a visible face") from None
    # 2. Audio, aligned to the frames.
    key, identity = input_key(path), _identity(path, cfg)
    audio_rel = features_rel = None
    audio = video.read_audio(path)
    if exists(audio):
        audio = video.align_audio(audio, len(boxes), cfg.fps)
        audio_rel = f"{key}/audio.wav"
        video.write_wav(root / audio_rel, audio)
        if exists(cfg.wav2vec):
            from rgbdface.data.io import save_npy

            features_rel = f"{key}/wav2vec.npy"
            save_npy(root / features_rel, video.wav2vec_features(Path(cfg.wav2vec), audio, len(boxes)))
    # 3. Per frame: crop with the smoothed box, fit, render, write.
    rows, first = [], None
    for f, frame in enumerate(video.read_frames(path, cfg.fps)):
        if f >= len(boxes):
            break
        crop = FaceCrop(crop_box_to(frame, boxes[f], cfg.size), boxes[f], frame.shape[:2])
        try:
            crop.landmarks = crop_landmarks(crop.image, f"{name} frame {f}")
        except NoFaceError:
            continue  # a frame without a fitted face is left out; the frame index keeps the gap
        fd = render_face_depth(crop.landmarks, cfg.size)
        rel = write_sample(root, key, f, crop.image, fd.depth, fd.mask, crop.landmarks, cfg.rgb_format)
        rows.append(_row(rel, clip=key, frame=f, identity=identity, source="wild", cfg=cfg, fd=fd, input_path=path, box=crop.box, audio=audio_rel, features=features_rel, fps=cfg.fps))
        if cfg.export_mesh:
            export_mesh(root / key / f"mesh_{f:06d}.{cfg.export_mesh}", fd, crop.image, crop.landmarks)
        if first is None:
            first = (crop, fd)
    if not rows:
        raise NoFaceError(f"{name}: the face mesh could not be fitted on any frame; pass a video with a clearer face")
    if cfg.studio_views:
        rows += _studio_rows(root, key, identity, first[0], first[1], cfg, path)
    return rows, len(boxes)


def prepare_input(path: Path, root: Path, cfg: PrepConfig, overwrite: bool = False) -> InputResult:
    """Process one image or video into `root`; never raises for a bad input (the result says why)."""
    t0 = time.perf_counter()
    path = Path(path)
    key = input_key(path)
    if not overwrite and manifest.rows_path(root, key).exists():
        return InputResult(str(path), "skipped")
    try:
        if not path.exists():
            raise InputError(f"{path}: no such file; check the path")
        if path.is_dir():
            raise InputError(f"{path}: is a folder; pass image or video files, or the folder as an input argument")
        rows, frames = (prepare_video if is_video(path) else prepare_image)(path, Path(root), cfg)
        manifest.write_rows(root, key, rows)
        return InputResult(str(path), "done", samples=len(rows), frames=frames, seconds=time.perf_counter() - t0)
    except InputError as e:
        return InputResult(str(path), "failed", error=str(e), seconds=time.perf_counter() - t0)
    except Exception as e:  # one bad file must not stop the batch; RGBDFACE_DEBUG shows the traceback
        if os.environ.get("RGBDFACE_DEBUG"):
            raise
        return InputResult(str(path), "failed", error=f"{path}: {type(e).__name__}: {e}", seconds=time.perf_counter() - t0)


def _prepare_input_star(args) -> InputResult:
    return prepare_input(*args)


def prepare_dataset(
    inputs: list[Path],
    root: Path,
    cfg: PrepConfig,
    workers: int = 0,
    overwrite: bool = False,
    on_result: Callable[[InputResult], None] | None = None,
) -> Summary:
    """Process every input into the dataset at `root`, `workers` processes at a time (0 = in this process).

    Finished inputs (their rows file exists) are skipped unless `overwrite`. The manifest
    snapshot is rebuilt at the end.
    """
    cfg.check()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_info(root)
    t0 = time.perf_counter()
    summary = Summary()
    jobs = [(Path(p), root, cfg, overwrite) for p in inputs]
    if workers > 0 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: MediaPipe's native threads do not survive fork
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = pool.map(_prepare_input_star, jobs)
            for r in results:
                _account(summary, r, on_result)
    else:
        for job in jobs:
            _account(summary, prepare_input(*job), on_result)
    manifest.write_manifest(root)
    summary.seconds = time.perf_counter() - t0
    return summary


def _account(summary: Summary, r: InputResult, on_result) -> None:
    if r.status == "done":
        summary.done += 1
        summary.samples += r.samples
        summary.frames += r.frames
    elif r.status == "skipped":
        summary.skipped += 1
    else:
        summary.failed.append((r.path, r.error or "failed"))
    if on_result:
        on_result(r)


def input_suffixes() -> set[str]:
    return IMAGE_SUFFIXES | VIDEO_SUFFIXES
