"""Shared helpers for the stage-3 tests: a tiny stage-3 model and real audio files written with ffmpeg."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import torch

SR = 16000


def tiny_motion_model(seed: int = 0):
    """build_tiny(32) + add_motion (mel encoder), marked as having reached stage 3; untrained (zero-init) weights."""
    from rgbdface.models.builder import build_tiny
    from rgbdface.models.motion import MotionConfig

    m = build_tiny(image_size=32, seed=seed)
    m.add_motion(MotionConfig.tiny())
    m.meta.stages = [0, 1, 3]
    return m


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Move zero-initialised output projections away from zero so the modules have an effect."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if "proj_out" in name or "to_out" in name:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def speech_like(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-rate modulated tone with a little noise: float32 in [-1, 1]."""
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    x = 0.3 * envelope * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t)) + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int = SR, channels: int = 1) -> Path:
    pcm = (np.clip(x, -1, 1) * 32767).round().astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(pcm.tobytes())
    return path


def write_video_with_audio(path: Path, seconds: float) -> Path:
    """A small mp4 (black frames + a tone, AAC) made by ffmpeg itself."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y",
           "-f", "lavfi", "-i", f"color=c=gray:s=32x32:d={seconds}:r=25",
           "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}:sample_rate=44100",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path
