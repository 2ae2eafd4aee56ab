"""Writing videos frame by frame through imageio-ffmpeg's ffmpeg binary: H.264, yuv420p, audio muxed.

Frames go to ffmpeg's stdin as they are made, so memory does not grow with the video's
length. The writer is not atomic by itself: write to a temporary path (`atomic_path`)
and let it rename the file once the writer has closed cleanly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from rgbdface.data.video import ffmpeg_exe
from rgbdface.utils import InputError, exists


class VideoWriter:
    """uint8 RGB frames [H, W, 3] → an H.264 (yuv420p) video at `fps`, optionally with an audio track.

    audio: a file ffmpeg reads (its first audio track is muxed, AAC); audio_seconds: keep only
    its first seconds. Odd frame sizes are padded by one pixel (yuv420p needs even sizes).
    Use as a context manager: on an exception ffmpeg is stopped and nothing is finalised.
    """

    def __init__(self, path: str | Path, fps: int = 25, audio: str | Path | None = None,
                 audio_seconds: float | None = None, crf: int = 18):
        self.path, self.fps, self.audio, self.audio_seconds, self.crf = Path(path), fps, audio, audio_seconds, crf
        self.proc: subprocess.Popen | None = None
        self.size: tuple[int, int] | None = None  # (H, W)
        self.frames = 0

    def _start(self, h: int, w: int) -> None:
        cmd = [ffmpeg_exe(), "-nostdin", "-y", "-v", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(self.fps), "-i", "-"]
        if exists(self.audio):
            if exists(self.audio_seconds):
                cmd += ["-t", f"{self.audio_seconds:.6f}"]
            cmd += ["-i", str(self.audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "medium", "-crf", str(self.crf),
                "-pix_fmt", "yuv420p", "-r", str(self.fps), "-movflags", "+faststart", str(self.path)]
        # Own session: a Ctrl-C in the terminal reaches us, and we stop ffmpeg ourselves.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.size = (h, w)

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
        if self.proc is None:
            self._start(*frame.shape[:2])
        elif frame.shape[:2] != self.size:
            raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame's {self.size}")
        try:
            self.proc.stdin.write(frame.tobytes())
        except BrokenPipeError:
            raise InputError(f"{self.path}: ffmpeg stopped while writing ({self._error()})") from None
        self.frames += 1

    def _error(self) -> str:
        err = self.proc.stderr.read().decode(errors="replace").strip().splitlines() if self.proc and self.proc.stderr else []
        return err[-1][:160] if err else "no message"

    def close(self) -> None:
        """Finish the file; raises InputError when ffmpeg failed or no frame was written."""
        if self.proc is None:
            raise ValueError(f"{self.path}: no frames were written")
        self.proc.stdin.close()
        rc = self.proc.wait()
        if rc != 0:
            raise InputError(f"{self.path}: ffmpeg could not write the video ({self._error()})")
        self.proc.stderr.close()
        self.proc = None

    def abort(self) -> None:
        """Stop ffmpeg without finishing the file (the caller removes it)."""
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.kill()
            self.proc.wait()
            self.proc.stderr.close()
            self.proc = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
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
