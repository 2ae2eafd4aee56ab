"""Audio in and out (paper §4.2, supp. §7.1): 16 kHz mono waveforms, WAV files, per-frame windows.

    load_audio(path)                   any file ffmpeg reads → float32 [T] at 16 kHz, mono (one-line errors)
    num_video_frames(T)                ceil(duration × 25): the frames a video of the audio has
    to_video_rate(native, F)           encoder-rate features [T', A] → [F, A]
    audio_windows(features, k)         [F, A] → [F, k, A], frames f-2..f+2 for k = 5 (clamped at the ends)

Decoding goes through the ffmpeg binary that imageio-ffmpeg ships, so any format ffmpeg
reads works and nothing is downloaded. The encoders that turn waveforms into features
live in `rgbdface.models.audio`.
"""

from __future__ import annotations

import math
import subprocess
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from rgbdface.data.video import ffmpeg_exe
from rgbdface.utils import InputError, atomic_path

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
VIDEO_FPS = 25
SILENCE_PEAK = 1e-4  # a waveform whose peak stays below this is silent (-80 dBFS)


# --------------------------------------------------------------------------------- decoding
def decode_audio(path: Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """The first audio track as float32 mono [T] at `sample_rate` (empty when the file has none).

    One ffmpeg decode serves prep-depth and talk; a file ffmpeg cannot read is an InputError.
    """
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0?", "-vn", "-ac", "1", "-ar", str(sample_rate)]
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


def load_audio(path: str | Path, max_seconds: float | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio track of any file ffmpeg reads, as float32 mono [T] at `sample_rate`.

    Raises InputError (one line) when the file is missing or unreadable, has no audio,
    is empty, or is silent.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an audio file")
    wave = decode_audio(path, sample_rate, max_seconds)
    if wave.size == 0:
        raise InputError(f"{path}: no audio samples (empty file or no audio track); pass a file with speech")
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        raise InputError(f"{path}: the audio is silent; pass a file with speech")
    return wave


def align_audio(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Trim or zero-pad so frame f covers samples [f * sr / fps, (f + 1) * sr / fps)."""
    n = int(round(n_frames * sample_rate / fps))
    out = np.zeros(n, np.float32)
    out[: min(n, len(audio))] = audio[:n]
    return out


# --------------------------------------------------------------------------------- WAV files
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


# --------------------------------------------------------------------------------- frames and windows
def num_video_frames(num_samples: int, fps: int = VIDEO_FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """ceil(duration × fps): the video covers the whole audio and ends with it."""
    return max(1, math.ceil(num_samples * fps / sample_rate - 1e-9))


def to_video_rate(native: "torch.Tensor", num_frames: int) -> "torch.Tensor":
    """Encoder-rate features [T, A] → [F, A] by linear interpolation over time."""
    import torch.nn.functional as F
    from einops import rearrange

    x = rearrange(native, "t a -> 1 a t")
    x = F.interpolate(x, size=num_frames, mode="linear", align_corners=False)
    return rearrange(x, "1 a f -> f a")


def audio_windows(features, k: int = 5, frames: Sequence[int] | "torch.Tensor" | None = None) -> "torch.Tensor":
    """Per-frame features [N, A] → windows [F, k, A]: rows f - k//2 .. f + k//2 for each f in `frames`
    (default: every row, F = N), clamped to [0, N - 1].

    The one windowing of training (a clip's target frames) and inference (every video frame).
    A numpy array is read as float32; a tensor keeps its dtype and device.
    """
    import torch

    if k < 1 or k % 2 == 0:
        raise ValueError(f"k must be odd and >= 1, got {k}")
    if not torch.is_tensor(features):
        features = torch.as_tensor(np.asarray(features, np.float32))
    n = features.shape[0]
    centres = torch.arange(n) if frames is None else torch.as_tensor(frames, dtype=torch.long)
    offsets = torch.arange(k) - k // 2  # [k]
    index = (centres[:, None] + offsets[None]).clamp(0, n - 1)  # [F, k]
    return features[index.to(features.device)]  # [F, k, A]
