"""Video in and out: frames at a fixed rate and smoothed crop boxes for prep-depth; H.264 writing for talk.

Everything goes through the ffmpeg binary that imageio-ffmpeg ships, so any
format ffmpeg reads works and nothing is downloaded. Audio: data/audio.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np

from rgbdface.utils import InputError, exists

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


def read_frames(path: Path, fps: float, width: int | None = None, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """uint8 RGB frames [H, W, 3] resampled to `fps` (ffmpeg's fps filter), optionally scaled to `width`.

    size: the video's (width, height) from `video_size`, when the caller has it (each probe starts ffmpeg)."""
    import logging

    import imageio_ffmpeg

    w, h = size or video_size(path)
    vf = f"fps={fps}"
    if width is not None and width < w:
        h = int(round(h * width / w / 2)) * 2
        w = width
        vf += f",scale={w}:{h}:flags=area"
    try:
        gen = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", vf])
        notes = logging.getLogger("imageio_ffmpeg")  # it warns that scaled frames differ in size from the source's
        level = notes.level
        notes.setLevel(logging.ERROR)
        try:
            next(gen)
        finally:
            notes.setLevel(level)
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


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class VideoWriter:
    """uint8 RGB frames [H, W, 3] → an H.264 (yuv420p) video at `fps`, optionally with an audio track.

    Frames stream to ffmpeg as they are made (`imageio_ffmpeg.write_frames`), so memory does
    not grow with the video's length. audio: a file ffmpeg reads (its first audio track is
    muxed, AAC); audio_seconds: keep only its first seconds. Odd frame sizes are padded by one
    pixel (yuv420p needs even sizes). Not atomic by itself: write to a temporary path
    (`atomic_path`), which is renamed once the writer has closed cleanly.
    """

    def __init__(self, path: str | Path, fps: int = 25, audio: str | Path | None = None,
                 audio_seconds: float | None = None, crf: int = 18, name: str | Path | None = None):
        self.path, self.fps, self.audio, self.audio_seconds, self.crf = Path(path), fps, audio, audio_seconds, crf
        self.name = name or self.path  # how messages name the video (the target of a temporary path)
        self.size: tuple[int, int] | None = None  # (H, W)
        self.frames = 0
        self._gen = None
        self._proc = None  # the ffmpeg process

    def _start(self, h: int, w: int) -> None:
        import imageio_ffmpeg

        params = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-preset", "medium", "-crf", str(self.crf), "-movflags", "+faststart"]
        if exists(self.audio):
            params += ["-b:a", "128k"] + (["-af", f"atrim=end={self.audio_seconds:.6f}"] if exists(self.audio_seconds) else [])
        self._gen = imageio_ffmpeg.write_frames(
            str(self.path), (w, h), fps=self.fps, codec="libx264", quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=params, audio_path=str(self.audio) if exists(self.audio) else None, audio_codec="aac")
        self._gen.send(None)
        # write_frames does not check how ffmpeg ended: keep its process to read the exit status at close
        self._proc = self._gen.gi_frame.f_locals.get("p") if self._gen.gi_frame is not None else None
        self.size = (h, w)

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._gen is None:
            self._start(*frame.shape[:2])
        elif frame.shape[:2] != self.size:
            raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame's {self.size}")
        try:
            self._gen.send(frame)
        except OSError:  # ffmpeg has exited (its own message is on stderr)
            self._gen = None
            raise InputError(f"{self.name}: ffmpeg stopped while writing the video; check the free space and the path") from None
        self.frames += 1

    def close(self) -> None:
        """Finish the file; raises InputError when ffmpeg wrote nothing, ValueError when no frame was written."""
        if self._gen is None:
            raise ValueError(f"{self.path}: no frames were written")
        self._gen.close()  # waits for ffmpeg to finish the file
        self._gen = None
        status = self._proc.poll() if self._proc is not None else 0
        if status != 0 or not self.path.is_file() or self.path.stat().st_size == 0:  # e.g. a full disk: a truncated file
            how = f"stopped by {_signal_name(-status)}" if status and status < 0 else f"exit status {status}"
            raise InputError(f"{self.name}: ffmpeg could not finish the video ({how}); check the free space and the path")

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        elif self._gen is not None:  # stop ffmpeg; the caller removes the unfinished file
            self._gen.close()
            self._gen = None
        return False


def probe(path: str | Path) -> dict:
    """What ffmpeg reports about a media file: fps, video codec and pixel format, whether it has audio."""
    import re

    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True)
    info = proc.stderr
    video = re.search(r"Stream #\S+.*Video: (\w+)[^,]*, (\w+)", info)
    fps = re.search(r"([\d.]+) fps", info)
    size = re.search(r"Video: .*?, (\d+)x(\d+)", info)
    return {
        "video_codec": video.group(1) if video else None,
        "pix_fmt": video.group(2) if video else None,
        "fps": float(fps.group(1)) if fps else None,
        "size": (int(size.group(1)), int(size.group(2))) if size else None,
        "audio_codec": (m.group(1) if (m := re.search(r"Stream #\S+.*Audio: (\w+)", info)) else None),
    }
