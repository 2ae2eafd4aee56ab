"""Video input for prep-depth: frames at a fixed rate and smoothed crop boxes (audio: data/audio.py).

Everything goes through the ffmpeg binary that imageio-ffmpeg ships, so any
format ffmpeg reads works and nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from rgbdface.utils import InputError

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}
DETECT_WIDTH = 640  # face boxes are found on frames scaled to this width


def ffmpeg_exe() -> str:
    """The ffmpeg binary imageio-ffmpeg ships (nothing is downloaded)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def video_size(path: Path) -> tuple[int, int]:
    """(width, height) of a video's frames; InputError when ffmpeg cannot read it."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
    except (OSError, RuntimeError, StopIteration) as e:
        raise InputError(f"{path}: not a readable video ({type(e).__name__}); pass a file ffmpeg can decode") from None
    w, h = meta["size"]
    return int(w), int(h)


def read_frames(path: Path, fps: float, width: int | None = None) -> Iterator[np.ndarray]:
    """uint8 RGB frames [H, W, 3] resampled to `fps` (ffmpeg's fps filter), optionally scaled to `width`."""
    import imageio_ffmpeg

    w, h = video_size(path)
    vf = f"fps={fps}"
    if width is not None and width < w:
        h = int(round(h * width / w / 2)) * 2
        w = width
        vf += f",scale={w}:{h}:flags=area"
    try:
        gen = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", vf])
        next(gen)
        for buf in gen:
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    except RuntimeError as e:
        raise InputError(f"{path}: ffmpeg could not decode the video ({str(e).splitlines()[0][:120]})") from None


def smooth_boxes(boxes: list[tuple[float, float, float, float] | None], sigma: float = 2.0) -> list[tuple[float, float, float, float]]:
    """Smooth square crop boxes over time so the crop does not jitter.

    Centres and sides are filtered with a Gaussian of `sigma` frames; frames without a
    box take values interpolated from their neighbours. Raises ValueError when no frame has a box.
    """
    have = np.array([b is not None for b in boxes])
    if not have.any():
        raise ValueError("no frame has a face box")
    arr = np.array([b if b is not None else (np.nan,) * 4 for b in boxes], np.float64)
    params = np.stack([(arr[:, 0] + arr[:, 2]) / 2, (arr[:, 1] + arr[:, 3]) / 2, arr[:, 2] - arr[:, 0]], 1)  # cx, cy, side
    t = np.arange(len(boxes))
    for k in range(3):
        params[:, k] = np.interp(t, t[have], params[have, k])
    if sigma > 0 and len(boxes) > 1:
        radius = int(np.ceil(3 * sigma))
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        kernel /= kernel.sum()
        padded = np.pad(params, ((radius, radius), (0, 0)), mode="edge")
        params = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], 1)
    cx, cy, side = params.T
    return [(float(a - s / 2), float(b - s / 2), float(a + s / 2), float(b + s / 2)) for a, b, s in zip(cx, cy, side)]
