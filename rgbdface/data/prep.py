"""prep-depth as a library: images and videos → a dataset of RGB, depth, mask and landmarks.

`prepare_dataset` runs the whole batch (workers, skipping finished inputs, a summary);
`prepare_input` handles one file. Per frame: face crop (data/face.py) → face-mesh
landmarks → depth and face-skin mask under the assumed camera (data/depth.py) →
optional studio-like renders and talking clips (data/studio.py) → files and manifest
rows (data/manifest.py). Everything after MediaPipe runs on a background thread pool
(data/writer.py), so frame i is rasterised and written while frame i + 1 is fitted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from rgbdface.data import manifest
from rgbdface.data.camera import DEPTH_UNIT_MM, Camera, depth_to_u16, landmarks_to_camera
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
from rgbdface.data.io import IMAGE_SUFFIXES, encode_jpeg, encode_png, load_image
from rgbdface.data.outputs import OutputPlan
from rgbdface.data.video import VIDEO_SUFFIXES
from rgbdface.data.writer import BackgroundWriter
from rgbdface.utils import InputError, UsageError, atomic_path, atomic_write_bytes, check_input_file, exists

MESH_FORMATS = ("ply", "obj", "glb")


@dataclass
class PrepConfig:
    size: int = DEFAULT_SIZE  # crop side in pixels
    margin: float = DEFAULT_MARGIN  # crop margin, in face sizes on each side
    studio_views: int = 0  # studio-like renders per fitted image (videos: per clip, from its first frame)
    studio_mix: int = 0  # studio-like renders per ordered pair of fitted portraits: shape of one, texture of the other
    shape_blends: int = 0  # new face shapes drawn from the space the fitted portraits span, each under one portrait's skin
    blend_views: int = 40  # studio-like renders of each of them
    talking_clips: int = 0  # synthetic talking clips (25 fps frames + audio) per fitted image, as studio_views
    clip_seconds: float = 2.4  # length of each talking clip
    talk_jaw: float = 15.0  # a talking clip's widest jaw opening, in degrees (each clip draws it from 0.8x to 1.2x this)
    all_faces: bool = False  # every face of an image, not just the largest
    export_mesh: str | None = None  # "ply" | "obj" | "glb": the fitted mesh with vertex colours
    wav2vec: Path | None = None  # local wav2vec2 folder for per-frame audio features (computed by audio_features)
    # (audio [T] at 16 kHz, frames) → features [frames, A]; with wav2vec set, pass
    # functools.partial(rgbdface.models.audio.wav2vec_features, wav2vec) (the encoders live in models/)
    audio_features: Callable[[np.ndarray, int], np.ndarray] | None = field(default=None, repr=False, compare=False)
    fps: float = 25.0  # video frame rate
    rgb_format: str = "jpg"  # "jpg" (quality 95) or "png"
    identity_from: str = "stem"  # "stem": the file name; "parent": its folder's name
    seed: int = 0  # studio views and talking clips are drawn from (seed, the input's name), wherever the input lies
    threads: int = 1  # background threads that rasterise, encode and write while MediaPipe runs (1 beats 2 on 2 cores: benchmarks/)

    def check(self) -> None:
        if self.size < 64:
            raise UsageError(f"--size {self.size}: must be at least 64")
        if self.margin < 0:
            raise UsageError(f"--margin {self.margin}: must be >= 0")
        if self.studio_views < 0:
            raise UsageError(f"--studio-views {self.studio_views}: must be >= 0")
        if self.studio_mix < 0:
            raise UsageError(f"--studio-mix {self.studio_mix}: must be >= 0")
        if self.shape_blends < 0:
            raise UsageError(f"--shape-blends {self.shape_blends}: must be >= 0")
        if self.blend_views < 1:
            raise UsageError(f"--blend-views {self.blend_views}: must be >= 1")
        if self.talking_clips < 0:
            raise UsageError(f"--talking-clips {self.talking_clips}: must be >= 0")
        if not 0 < self.talk_jaw <= 40:
            raise UsageError(f"--talk-jaw {self.talk_jaw}: must be in (0, 40] degrees")
        if not 0 < self.clip_seconds <= 60:
            raise UsageError(f"--clip-seconds {self.clip_seconds}: must be in (0, 60]")
        if self.threads < 0:
            raise UsageError(f"--threads {self.threads}: must be >= 0")
        if exists(self.export_mesh) and self.export_mesh not in MESH_FORMATS:
            raise UsageError(f"--export-mesh {self.export_mesh}: expected one of {', '.join(MESH_FORMATS)}")
        if self.fps <= 0:
            raise UsageError(f"--fps {self.fps}: must be > 0")
        if self.rgb_format not in ("jpg", "png"):
            raise UsageError(f"--rgb-format {self.rgb_format}: expected jpg or png")
        if self.identity_from not in ("stem", "parent"):
            raise UsageError(f"--identity-from {self.identity_from}: expected stem or parent")
        if exists(self.wav2vec) and not Path(self.wav2vec).is_dir():
            raise InputError(f"--wav2vec {self.wav2vec}: not a folder; pass a local wav2vec2 model folder")
        if exists(self.wav2vec) and not callable(self.audio_features):
            raise ValueError("PrepConfig.wav2vec needs audio_features: functools.partial(rgbdface.models.audio.wav2vec_features, wav2vec)")


@dataclass
class InputResult:
    path: str
    status: str  # "done" | "skipped" | "failed"
    samples: int = 0
    frames: int = 0
    error: str | None = None
    seconds: float = 0.0
    changed: str | None = None  # skipped: the options it was made with that differ from this run's, e.g. "--studio-views 2 (now 4)"


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


def changed_options(root: Path, key: str, cfg: PrepConfig) -> str | None:
    """The options a finished input was made with that differ from `cfg`, read from its rows, or None.

    A finished input is skipped, so more --studio-views or --talking-clips (or another --rgb-format,
    --fps, --clip-seconds) would silently not apply; the caller says which differ instead.
    """
    rows = manifest.rows_of(root, key)
    wild = [r for r in rows if r.get("source") == "wild"]
    if not wild:
        return None
    first = wild[0]
    clip = first["clip"]
    talk = sorted({r["clip"] for r in rows if r["clip"].startswith(f"{clip}-talk")})
    had = {"--studio-views": sum(r["clip"] == f"{clip}-studio" for r in rows), "--talking-clips": len(talk),
           "--rgb-format": Path(first["rgb"]).suffix.lstrip(".")}
    now = {"--studio-views": cfg.studio_views, "--talking-clips": cfg.talking_clips, "--rgb-format": cfg.rgb_format}
    if first.get("fps") is not None:  # a video
        had["--fps"], now["--fps"] = float(first["fps"]), float(cfg.fps)
    if talk and cfg.talking_clips:
        frames = sum(r["clip"] == talk[0] for r in rows)
        if frames != max(int(round(cfg.clip_seconds * cfg.fps)), 1):
            had["--clip-seconds"], now["--clip-seconds"] = round(frames / cfg.fps, 3), cfg.clip_seconds
    diff = [f"{k} {had[k]:g} (now {now[k]:g})" if not isinstance(had[k], str) else f"{k} {had[k]} (now {now[k]})"
            for k in had if had[k] != now[k]]
    return ", ".join(diff) or None


def input_key(path: Path) -> str:
    """A dataset-unique, readable key for an input: its stem and a short hash of its full path."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(path).stem)
    return f"{stem}-{digest}"


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


# --- writing one sample ----------------------------------------------------------------


def write_sample(root: Path, clip_dir: str, frame: int, rgb: np.ndarray, depth_mm: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, rgb_format: str) -> dict:
    """Encode and write one sample's files, each atomically; returns their paths relative to `root`."""
    import io

    stem = f"{frame:06d}"
    rel = {
        "rgb": f"{clip_dir}/rgb_{stem}.{rgb_format}",
        "depth": f"{clip_dir}/depth_{stem}.png",
        "mask": f"{clip_dir}/mask_{stem}.png",
        "landmarks": f"{clip_dir}/landmarks_{stem}.npy",
    }
    (root / clip_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / rel["rgb"], encode_jpeg(rgb, 95) if rgb_format == "jpg" else encode_png(rgb))
    atomic_write_bytes(root / rel["depth"], encode_png(depth_to_u16(depth_mm)))
    atomic_write_bytes(root / rel["mask"], encode_png(np.asarray(mask, bool).view(np.uint8) * np.uint8(255)))
    buf = io.BytesIO()
    np.save(buf, np.asarray(landmarks, np.float32), allow_pickle=False)
    atomic_write_bytes(root / rel["landmarks"], buf.getvalue())
    return rel


def _row(rel: dict, *, clip: str, frame: int, identity: str, source: str, cfg: PrepConfig, input_path: Path, box=None, view=None, audio=None, features=None, fps=None) -> dict:
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
        "camera": Camera.for_crop(cfg.size).to_dict(),
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


# --- per-sample tasks (run on the background writer's threads) --------------------------


def fit_and_write(root: Path, clip: str, frame: int, crop: FaceCrop, cfg: PrepConfig) -> dict:
    """Depth and mask of a fitted crop, written as sample `frame` of `clip`; returns the sample's file paths."""
    fd = render_face_depth(crop.landmarks, cfg.size)
    rel = write_sample(root, clip, frame, crop.image, fd.depth, fd.mask, crop.landmarks, cfg.rgb_format)
    if cfg.export_mesh:
        export_mesh(root / clip / f"mesh_{frame:06d}.{cfg.export_mesh}", fd, crop.image, crop.landmarks)
    return rel


def _render_and_write(root: Path, clip: str, frame: int, image: np.ndarray, landmarks: np.ndarray, vertices: np.ndarray, view, rgb_format: str,
                      shape_landmarks: np.ndarray | None = None) -> dict:
    from rgbdface.data.studio import render_view

    r = render_view(image, landmarks, vertices, Camera.for_crop(image.shape[0]), view, shape_landmarks)
    return write_sample(root, clip, frame, r.rgb, r.depth, r.mask, r.landmarks, rgb_format)


def _rows_of(future: Future, **row) -> Callable[[], dict]:
    return lambda: _row(future.result(), **row)


def seed_name(key: str) -> str:
    """What an input's studio views and talking clips are drawn from: its key without the hash of its full
    path (`input_key`), so that a dataset made in another folder, or from another clone, is the same."""
    return key.rsplit("-", 1)[0]


def _rng(cfg: PrepConfig, *parts) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1(":".join(map(str, (cfg.seed, *parts))).encode()).hexdigest()[:8], 16))


def _submit_studio(writer: BackgroundWriter, root: Path, key: str, identity: str, crop: FaceCrop, cfg: PrepConfig, input_path: Path,
                   views_from: int = 0, clips_from: int = 0) -> list[Callable[[], dict]]:
    """Studio views and talking clips of one fitted crop, queued on `writer`; returns row makers.

    `views_from`/`clips_from`: the views and clips an earlier run made are not made again (view k is
    drawn as in a run that makes them all)."""
    from rgbdface.data.studio import plan_talking_clip, random_view
    from rgbdface.data.audio import write_wav

    rows = []
    vertices = landmarks_to_camera(crop.landmarks, Camera.for_crop(cfg.size))
    rng = _rng(cfg, seed_name(key))
    clip = f"{key}-studio"
    for k in range(cfg.studio_views):
        view = random_view(rng)
        if k < views_from:
            continue
        f = writer.submit(_render_and_write, root, clip, k, crop.image, crop.landmarks, vertices, view, cfg.rgb_format)
        rows.append(_rows_of(f, clip=clip, frame=k, identity=identity, source="studio", cfg=cfg, input_path=input_path, view=view.to_dict()))
    for c in range(clips_from, cfg.talking_clips):
        clip = f"{key}-talk{c}"
        plan = plan_talking_clip(max(int(round(cfg.clip_seconds * cfg.fps)), 1), cfg.fps, _rng(cfg, seed_name(key), "talk", c),
                                 max_jaw=(0.8 * cfg.talk_jaw, 1.2 * cfg.talk_jaw))
        audio_rel, features_rel = f"{clip}/audio.wav", None
        writer.submit(write_wav, root / audio_rel, plan.audio, plan.sample_rate)
        if exists(cfg.wav2vec):
            from rgbdface.data.io import save_npy

            features_rel = f"{clip}/wav2vec.npy"
            save_npy(root / features_rel, cfg.audio_features(plan.audio, len(plan.views)))
        for i, view in enumerate(plan.views):
            f = writer.submit(_render_and_write, root, clip, i, crop.image, crop.landmarks, vertices, view, cfg.rgb_format)
            rows.append(_rows_of(f, clip=clip, frame=i, identity=identity, source="studio", cfg=cfg, input_path=input_path, view=view.to_dict(),
                                 audio=audio_rel, features=features_rel, fps=cfg.fps))
    return rows


# --- mixed identities ------------------------------------------------------------------

MIX_PREFIX = "mix-"


def fitted_portraits(root: Path) -> dict[str, dict]:
    """The first fitted wild sample of each clip in the dataset (mixed clips excluded): clip → row."""
    out: dict[str, dict] = {}
    for row in manifest.collect_rows(root):  # sorted by clip, then frame
        if row["source"] == "wild" and not row["clip"].startswith(MIX_PREFIX):
            out.setdefault(row["clip"], row)
    return out


def mix_pairs(portraits: dict[str, dict]) -> list[tuple[str, dict, dict]]:
    """Every ordered pair (shape, texture) of portraits of different identities, and each portrait
    with itself: its rows-file key, the shape's row and the texture's row."""
    pairs = []
    for a, shape in portraits.items():
        for b, texture in portraits.items():
            if a == b or shape["identity"] != texture["identity"]:
                pairs.append((f"{MIX_PREFIX}{a}-{b}" if a != b else f"{MIX_PREFIX}{a}", shape, texture))
    return pairs


def prepare_mix(key: str, shape: dict, texture: dict, root: Path, cfg: PrepConfig, overwrite: bool = False, writer: BackgroundWriter | None = None) -> InputResult:
    """`cfg.studio_mix` studio renders of a mixed identity: `shape`'s fitted mesh under `texture`'s
    skin, with a skin tone of its own (the same in every view), as one clip and identity."""
    name = f"{shape['identity']} (shape) + {texture['identity']} (texture)"
    return _prepare_new_identity(key, name, f"{shape['identity']}+{texture['identity']}", texture, lambda: np.load(root / shape["landmarks"], allow_pickle=False),
                                 {"shape": shape["id"]}, f"{shape['input']} + {texture['input']}", cfg.studio_mix, "--studio-mix", root, cfg, overwrite, writer)


BLEND_PREFIX = f"{MIX_PREFIX}blend"


def aligned_shapes(landmark_sets: list[np.ndarray], iterations: int = 5) -> np.ndarray:
    """Landmark sets [P][N, 3] (crop pixels) moved, turned and scaled onto their common mean (generalised
    Procrustes on the 468 mesh points), so that they differ in shape only: [P, N, 3]."""
    sets = [np.asarray(lm, np.float64) for lm in landmark_sets]
    target = sets[0][:468]
    scale = np.mean([np.linalg.norm(s[:468] - s[:468].mean(0)) for s in sets])
    out = np.stack(sets)
    for _ in range(iterations):
        mu = target.mean(0)
        t0 = (target - mu) / np.linalg.norm(target - mu)
        for i, s in enumerate(sets):
            c = s[:468].mean(0)
            x = (s - c) / np.linalg.norm(s[:468] - c)
            u, _, vt = np.linalg.svd(x[:468].T @ t0)
            d = np.sign(np.linalg.det(u @ vt))
            rot = u @ np.diag([1.0, 1.0, d]) @ vt  # a proper rotation: no mirrored faces
            out[i] = (x @ rot) * scale + mu
        target = out[:, :468].mean(0)
    return out


def random_shape(aligned: np.ndarray, rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    """A new face shape [N, 3] from the space the aligned portraits span: their mean plus a random multiple of each one's
    difference from it, N(0, spread² / P), so that new shapes differ from the mean about as much as the portraits do."""
    mean = aligned.mean(0)
    weights = rng.normal(0.0, spread / np.sqrt(len(aligned)), len(aligned))
    return mean + np.tensordot(weights, aligned - mean, axes=1)


def prepare_blend(index: int, portraits: dict[str, dict], root: Path, cfg: PrepConfig, overwrite: bool = False, writer: BackgroundWriter | None = None) -> InputResult:
    """`cfg.blend_views` studio renders of a new face shape (`random_shape` of every fitted portrait's) under the
    skin of one portrait in turn, with a skin tone of its own, as one clip; identity 'blendK+TEXTURE'."""
    rows = [portraits[k] for k in sorted(portraits)]
    texture = rows[index % len(rows)]
    key = f"{BLEND_PREFIX}{index:03d}"
    name = f"face shape {index} (blend of {len(rows)}) + {texture['identity']} (texture)"

    def shape() -> np.ndarray:
        aligned = aligned_shapes([np.load(root / r["landmarks"], allow_pickle=False) for r in rows])
        return random_shape(aligned, _rng(cfg, key, "shape"))

    return _prepare_new_identity(key, name, f"blend{index:03d}+{texture['identity']}", texture, shape, {"shapes": [r["id"] for r in rows]},
                                 f"blend of {len(rows)} + {texture['input']}", cfg.blend_views, "--blend-views", root, cfg, overwrite, writer)


def _prepare_new_identity(key: str, name: str, identity: str, texture: dict, shape_landmarks: Callable[[], np.ndarray], view_extra: dict, input_path: str,
                          views: int, option: str, root: Path, cfg: PrepConfig, overwrite: bool, writer: BackgroundWriter | None) -> InputResult:
    """`views` studio renders of a face shape that no portrait has (its landmarks from `shape_landmarks()`), under
    `texture`'s skin with a skin tone of its own (the same in every view), as one clip `key` of `identity`."""
    from dataclasses import replace

    from rgbdface.data.studio import random_albedo, random_view

    t0 = time.perf_counter()
    if not overwrite and manifest.rows_path(root, key).exists():
        made = len(manifest.rows_of(root, key))
        return InputResult(name, "skipped", changed=f"{option} {made} (now {views})" if made != views else None)
    try:
        with _removed_on_failure(root, key):
            image = load_image(root / texture["rgb"])
            tex_lm = np.load(root / texture["landmarks"], allow_pickle=False)
            shape_lm = shape_landmarks()
            if image.shape[0] != cfg.size:
                raise InputError(f"{name}: the fitted crop is {image.shape[0]} px, not {cfg.size}; mix within one dataset")
            vertices = landmarks_to_camera(shape_lm, Camera.for_crop(cfg.size))
            rng = _rng(cfg, key)
            albedo = random_albedo(rng)
            rows = []
            with _writer_for_input(cfg, writer) as w:
                for k in range(views):
                    view = replace(random_view(rng), albedo=albedo)
                    f = w.submit(_render_and_write, root, key, k, image, tex_lm, vertices, view, cfg.rgb_format, shape_lm)
                    rows.append(_rows_of(f, clip=key, frame=k, identity=identity, source="studio", cfg=cfg, input_path=input_path,
                                         view={**view.to_dict(), **view_extra, "texture": texture["id"]}))
                w.results()
            manifest.write_rows(root, key, [make() for make in rows])
            return InputResult(name, "done", samples=len(rows), seconds=time.perf_counter() - t0)
    except InputError as e:
        return _failed(name, e, t0)
    except OSError as e:
        error = f"{name}: cannot read {e.filename or 'a fitted sample'} ({e.strerror or e}); re-run prep-depth on that portrait with --overwrite"
        return InputResult(name, "failed", error=error, seconds=time.perf_counter() - t0)
    except Exception as e:  # a broken sample file must not stop the other pairs
        return _failed(name, e, t0)


# --- one input -------------------------------------------------------------------------


def _identity(path: Path, cfg: PrepConfig) -> str:
    return Path(path).resolve().parent.name if cfg.identity_from == "parent" else Path(path).stem


def prepare_image(path: Path, root: Path, cfg: PrepConfig, writer: BackgroundWriter) -> tuple[list[Callable[[], dict]], int]:
    image = load_image(path)
    name = str(path)
    faces = detect_faces(image) if cfg.all_faces else None  # else crop_face finds the largest
    if faces == []:
        raise NoFaceError(f"{name}: no face found; pass a photo with a visible face")
    key, rows = input_key(path), []
    for i in range(len(faces) if cfg.all_faces else 1):
        crop = crop_face(image, cfg.size, cfg.margin, which=i, name=name, with_landmarks=True, faces=faces)
        clip = key if not cfg.all_faces else f"{key}-f{i}"
        identity = _identity(path, cfg) + (f"-f{i}" if cfg.all_faces else "")
        f = writer.submit(fit_and_write, root, clip, 0, crop, cfg)
        rows.append(_rows_of(f, clip=clip, frame=0, identity=identity, source="wild", cfg=cfg, input_path=path, box=crop.box))
        rows += _submit_studio(writer, root, clip, identity, crop, cfg, path)
    return rows, 1


def prepare_video(path: Path, root: Path, cfg: PrepConfig, writer: BackgroundWriter) -> tuple[list[Callable[[], dict]], int]:
    from rgbdface.data import audio as audio_io, video

    name = str(path)
    size = video.video_size(path)
    w = size[0]
    # 1. Face boxes on small frames, then smoothed over time.
    boxes = []
    for small in video.read_frames(path, cfg.fps, width=video.DETECT_WIDTH, size=size):
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
    audio = audio_io.read_audio(path)
    if exists(audio):
        audio = audio_io.align_audio(audio, len(boxes), cfg.fps)
        audio_rel = f"{key}/audio.wav"
        writer.submit(audio_io.write_wav, root / audio_rel, audio)
        if exists(cfg.wav2vec):
            from rgbdface.data.io import save_npy

            features_rel = f"{key}/wav2vec.npy"
            save_npy(root / features_rel, cfg.audio_features(audio, len(boxes)))
    # 3. Per frame: crop with the smoothed box and fit the mesh here (MediaPipe); depth, mask
    #    and files on the writer's threads, overlapping the next frame's MediaPipe.
    rows, first = [], None
    for f, frame in enumerate(video.read_frames(path, cfg.fps, size=size)):
        if f >= len(boxes):
            break
        crop = FaceCrop(crop_box_to(frame, boxes[f], cfg.size), boxes[f], frame.shape[:2])
        try:
            crop.landmarks = crop_landmarks(crop.image, f"{name} frame {f}")
        except NoFaceError:
            continue  # a frame without a fitted face is left out; the frame index keeps the gap
        done = writer.submit(fit_and_write, root, key, f, crop, cfg)
        rows.append(_rows_of(done, clip=key, frame=f, identity=identity, source="wild", cfg=cfg, input_path=path, box=crop.box, audio=audio_rel, features=features_rel, fps=cfg.fps))
        first = first or crop
    if not rows:
        raise NoFaceError(f"{name}: the face mesh could not be fitted on any frame; pass a video with a clearer face")
    rows += _submit_studio(writer, root, key, identity, first, cfg, path)
    return rows, len(boxes)


@contextmanager
def _writer_for_input(cfg: PrepConfig, shared: BackgroundWriter | None) -> Iterator[BackgroundWriter]:
    """The run's shared writer (this input's tasks dropped if it fails), or a thread writer of the input's own."""
    if shared is None:
        with BackgroundWriter(cfg.threads) as writer:
            yield writer
        return
    try:
        yield shared
    except BaseException:
        shared.discard()
        raise


@dataclass
class _Started:
    """An input whose MediaPipe work is done and whose files are being written on the writer's threads."""

    path: Path
    key: str
    makers: list[Callable[[], dict]]
    frames: int
    tasks: list[Future]
    t0: float
    added: list[Path] | None = None  # extending a finished input: the files and folders it adds (removed on failure)
    kept: int = 0  # extending a finished input: its rows from earlier runs (first in `makers`)

    def remove(self, root: Path) -> None:
        """After a failure or interrupt: what this run wrote of the input goes (an extension: only what it added)."""
        if self.added is None:
            remove_input_files(root, self.key)
            return
        import shutil

        for p in self.added:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _extension(path: Path, root: Path, key: str, cfg: PrepConfig, writer: BackgroundWriter, t0: float) -> _Started | None:
    """A finished input asked for more --studio-views or --talking-clips: the missing ones, rendered from its
    fitted crop and landmarks (from the crop as stored: a JPEG crop gives renders a little unlike a single run's),
    queued on `writer`; None when nothing is missing."""
    from dataclasses import replace
    from types import SimpleNamespace

    rows = manifest.rows_of(root, key)
    wild_clips = list(dict.fromkeys(r["clip"] for r in rows if r.get("source") == "wild"))
    makers: list[Callable[[], dict]] = [lambda r=r: r for r in rows]
    added: list[Path] = []
    for clip in wild_clips:
        first = min((r for r in rows if r["clip"] == clip), key=lambda r: r["frame"])
        views = sum(r["clip"] == f"{clip}-studio" for r in rows)
        clips = len({r["clip"] for r in rows if r["clip"].startswith(f"{clip}-talk")})
        if views >= cfg.studio_views and clips >= cfg.talking_clips:
            continue
        fmt = Path(first["rgb"]).suffix.lstrip(".")  # new renders are stored like the input's others
        crop = SimpleNamespace(image=load_image(root / first["rgb"]), landmarks=np.load(root / first["landmarks"], allow_pickle=False))
        added += [root / f"{clip}-studio" / f"{kind}_{k:06d}.{ext}" for k in range(views, cfg.studio_views)
                  for kind, ext in (("rgb", fmt), ("depth", "png"), ("mask", "png"), ("landmarks", "npy"))]
        added += [root / f"{clip}-talk{c}" for c in range(clips, cfg.talking_clips)]
        makers += _submit_studio(writer, root, clip, first["identity"], crop, replace(cfg, rgb_format=fmt), Path(first["input"]),
                                 views_from=views, clips_from=clips)
    if not added:
        return None
    return _Started(path, key, makers, 0, writer.take(), t0, added=added, kept=len(rows))


def start_input(path: Path, root: Path, cfg: PrepConfig, overwrite: bool, writer: BackgroundWriter) -> InputResult | _Started:
    """The MediaPipe part of one input, its files queued on `writer`; a result already if it is skipped or fails."""
    t0 = time.perf_counter()
    path = Path(path)
    key = input_key(path)
    if not overwrite and manifest.rows_path(root, key).exists():
        try:
            extension = _extension(path, Path(root), key, cfg, writer, t0)
        except Exception as e:  # the stored crop cannot be read: the input's files stay as they were
            return _failed(str(path), e, t0)
        if extension is not None:
            return extension
        return InputResult(str(path), "skipped", changed=changed_options(Path(root), key, cfg))
    if not manifest.rows_path(root, key).exists():
        remove_input_files(Path(root), key)  # samples of a run killed before it finished this input: named by no row
    try:
        with _removed_on_failure(Path(root), key):
            if path.is_dir():
                raise InputError(f"{path}: is a folder; pass image or video files, or the folder as an input argument")
            check_input_file(path, "image or video file")  # missing, or a pipe or device (never opened)
            with _writer_for_input(cfg, writer) as w:
                makers, frames = (prepare_video if is_video(path) else prepare_image)(path, Path(root), cfg, w)
        return _Started(path, key, makers, frames, writer.take(), t0)
    except Exception as e:  # one bad file must not stop the batch
        return _failed(str(path), e, t0)


def finish_input(started: _Started, root: Path, writer: BackgroundWriter) -> InputResult:
    """Wait for an input's files, then write the rows file that marks it done."""
    try:
        try:
            writer.results(started.tasks)  # every file is written (or the first error raised) ...
            rows = [make() for make in started.makers]
            manifest.write_rows(root, started.key, rows)  # ... before the rows file that marks the input done
        except BaseException:
            started.remove(root)
            raise
        return InputResult(str(started.path), "done", samples=len(rows) - started.kept, frames=started.frames, seconds=time.perf_counter() - started.t0)
    except Exception as e:
        return _failed(str(started.path), e, started.t0)


def prepare_input(path: Path, root: Path, cfg: PrepConfig, overwrite: bool = False, writer: BackgroundWriter | None = None) -> InputResult:
    """Process one image or video into `root`; never raises for a bad input (the result says why).

    `writer` is a pool shared by the run's inputs (by default, the input starts its own threads)."""
    with contextlib.ExitStack() as stack:
        w = writer if writer is not None else stack.enter_context(BackgroundWriter(cfg.threads))
        started = start_input(path, root, cfg, overwrite, w)
        return finish_input(started, Path(root), w) if isinstance(started, _Started) else started


@contextmanager
def _removed_on_failure(root: Path, key: str) -> Iterator[None]:
    """On any error or interrupt, remove every file of the input `key` (its clip folders and rows file):
    a failed input leaves no sample that no manifest row names, and no row that names a missing sample."""
    try:
        yield
    except BaseException:
        remove_input_files(root, key)
        raise


def remove_input_files(root: Path, key: str) -> None:
    """Remove the clip folders (KEY, KEY-f0, KEY-studio, KEY-talk0, ...) and the rows file of the input `key`.

    Runs before every new input: the folder's names are listed once and only those that start with
    `key` are looked at further, so a dataset of many inputs costs no stat or match per other input."""
    import re
    import shutil

    own = re.compile(rf"{re.escape(key)}(-f\d+)?(-studio|-talk\d+)?")
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    for name in names:
        if name.startswith(key) and own.fullmatch(name) and (root / name).is_dir():
            shutil.rmtree(root / name, ignore_errors=True)
    manifest.rows_path(root, key).unlink(missing_ok=True)


def _failed(name: str, e: Exception, t0: float) -> InputResult:
    """A failed input's result: an InputError's own message, else the error named (RGBDFACE_DEBUG re-raises it)."""
    if not isinstance(e, InputError) and os.environ.get("RGBDFACE_DEBUG"):
        raise e
    error = str(e) if isinstance(e, InputError) else f"{name}: {type(e).__name__}: {e}"
    return InputResult(name, "failed", error=error, seconds=time.perf_counter() - t0)


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
    plan = OutputPlan().folder(root, "the dataset", replaced=False, exclusive=True)
    for p in inputs:
        plan.input(p)
    plan.check()  # no input inside the dataset, and the dataset's place is writable
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_info(root, manifest.CropSpec(cfg.size, cfg.margin))
    t0 = time.perf_counter()
    summary = Summary()
    jobs = [(Path(p), root, cfg, overwrite) for p in inputs]
    # one writer for the whole run; worker processes (--workers) have their own per input
    with BackgroundWriter(cfg.threads) as writer:
        if workers > 0 and len(jobs) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: MediaPipe's native threads do not survive fork
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for r in pool.map(_prepare_input_star, jobs):
                    _account(summary, r, on_result)
        else:
            # Input i's files are written while input i + 1 goes through MediaPipe; results stay in input order.
            writing: _Started | None = None
            try:
                for job in jobs:
                    started = start_input(*job, writer=writer)
                    if writing is not None:
                        _account(summary, finish_input(writing, root, writer), on_result)
                        writing = None
                    if isinstance(started, _Started):
                        writing = started
                    else:
                        _account(summary, started, on_result)
                if writing is not None:
                    _account(summary, finish_input(writing, root, writer), on_result)
            except BaseException:  # interrupted (Ctrl-C, SIGTERM) with an input's files still being written
                if writing is not None:
                    writer.discard(writing.tasks)
                    writing.remove(root)
                raise
        if cfg.studio_mix:  # after every input, so that each pair can be made
            for key, shape, texture in mix_pairs(fitted_portraits(root)):
                _account(summary, prepare_mix(key, shape, texture, root, cfg, overwrite, writer), on_result)
        if cfg.shape_blends:
            portraits = fitted_portraits(root)
            if len(portraits) < 2:
                error = f"--shape-blends needs at least two fitted portraits in {root}, found {len(portraits)}; add portraits"
                _account(summary, InputResult("--shape-blends", "failed", error=error), on_result)
            else:
                for k in range(cfg.shape_blends):
                    _account(summary, prepare_blend(k, portraits, root, cfg, overwrite, writer), on_result)
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
