"""Video input for prep-depth: frames at a fixed rate, 16 kHz mono audio, smoothed crop boxes.

Everything goes through the ffmpeg binary that imageio-ffmpeg ships, so any
format ffmpeg reads works and nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path
from typing import Iterator

import numpy as np

from rgbdface.utils import InputError, atomic_path

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}
SAMPLE_RATE = 16000
DETECT_WIDTH = 640  # face boxes are found on frames scaled to this width


def _ffmpeg() -> str:
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


def decode_audio(path: Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """The first audio track as float32 mono [T] at `sample_rate` (empty when the file has none).

    One ffmpeg decode serves prep-depth and talk; a file ffmpeg cannot read is an InputError.
    """
    cmd = [_ffmpeg(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0?", "-vn", "-ac", "1", "-ar", str(sample_rate)]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.6f}"]
    proc = subprocess.run(cmd + ["-f", "s16le", "-"], capture_output=True)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        if any("does not contain any stream" in line for line in lines):  # no audio track
            return np.zeros(0, np.float32)
        why = lines[-1][:120] if lines else "unknown error"
        raise InputError(f"{path}: not readable audio ({why}); pass a file ffmpeg can decode (wav, mp3, m4a, a video)")
    return np.frombuffer(proc.stdout, "<i2").astype(np.float32) / 32768.0


def read_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """The first audio track as float32 mono at `sample_rate`, or None when there is none."""
    wave = decode_audio(path, sample_rate)
    return wave if wave.size else None


def align_audio(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Trim or zero-pad so frame f covers samples [f * sr / fps, (f + 1) * sr / fps)."""
    n = int(round(n_frames * sample_rate / fps))
    out = np.zeros(n, np.float32)
    out[: min(n, len(audio))] = audio[:n]
    return out


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM mono WAV, atomically."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(sample_rate)
            f.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as float32 (mono: [T]; else [T, C]) and its sample rate."""
    with wave.open(str(path), "rb") as f:
        sr, ch, n = f.getframerate(), f.getnchannels(), f.getnframes()
        if f.getsampwidth() != 2:
            raise InputError(f"{path}: only 16-bit PCM WAV is supported")
        data = np.frombuffer(f.readframes(n), "<i2").astype(np.float32) / 32768.0
    return (data if ch == 1 else data.reshape(-1, ch)), sr


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


def wav2vec_features(model_dir: Path, audio: np.ndarray, n_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame wav2vec 2.0 features [n_frames, (layers + 1) * dim] float16 from a local model folder.

    The same encoder as inference (`rgbdface.models.audio.Wav2VecAudioEncoder`): hidden states
    of all layers (the input embedding included), linearly interpolated to the frame rate and
    concatenated per frame (paper supp. §7.1).
    """
    import torch

    from rgbdface.models.audio import to_video_rate

    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"wav2vec 2.0 expects {SAMPLE_RATE} Hz audio, got {sample_rate}")
    encoder = _wav2vec(str(model_dir))
    with torch.inference_mode():
        feats = encoder.native(torch.from_numpy(np.asarray(audio, np.float32)).flatten())  # [T', A]
    return to_video_rate(feats.float().cpu(), n_frames).numpy().astype(np.float16)


_WAV2VEC: dict[str, object] = {}


def _wav2vec(model_dir: str):
    """One encoder per folder and process (loading is slow)."""
    if model_dir not in _WAV2VEC:
        from rgbdface.models.audio import Wav2VecAudioEncoder

        _WAV2VEC[model_dir] = Wav2VecAudioEncoder(model_dir)
    return _WAV2VEC[model_dir]
