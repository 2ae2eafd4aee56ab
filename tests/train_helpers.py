"""Tiny datasets in the prep-depth format (dataset.json + manifest.jsonl + RGB/depth/mask files), written by tests."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np


def _face(size: int, cx: float, cy: float, color: tuple[int, int, int], rng: np.random.Generator):
    """An RGB image with an elliptical 'face', and its depth (0.1 mm units, 0 outside) and mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rx, ry = 0.3 * size, 0.38 * size
    r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    inside = r2 < 1.0
    img = np.zeros((size, size, 3), np.float32)
    img[:] = (30, 40, 60)
    shade = np.clip(1.0 - 0.5 * r2, 0, 1)[..., None]
    img = np.where(inside[..., None], np.asarray(color, np.float32) * (0.5 + 0.5 * shade), img)
    # eyes: dark dots
    for ex in (cx - 0.12 * size, cx + 0.12 * size):
        img[((xx - ex) ** 2 + (yy - (cy - 0.08 * size)) ** 2) < (0.04 * size) ** 2] = (20, 20, 20)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    depth = np.where(inside, 6000.0 - 400.0 * np.sqrt(np.clip(1.0 - r2, 0, 1)), 0.0).round().astype(np.uint16)
    mask = (inside * 255).astype(np.uint8)
    return img, depth, mask


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> None:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def make_dataset(root: Path, identities: int = 2, frames: int = 3, size: int = 32, studio_per_identity: int = 0,
                 audio: bool = False, seed: int = 0, single: list[str] | None = None) -> Path:
    """`identities` people × `frames` consecutive frames (one clip each), optional studio views and audio."""
    from rgbdface.data.io import save_depth16, save_image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    colors = [(200, 150, 120), (120, 170, 210), (180, 200, 120), (220, 120, 180)]

    def add(key: str, ident: str, clip: str, f: int, source: str, cx: float, cy: float, color, wav=None):
        img, depth, mask = _face(size, cx, cy, color, rng)
        d = root / key
        d.mkdir(parents=True, exist_ok=True)
        save_image(d / f"rgb_{f:06d}.png", img)
        save_depth16(d / f"depth_{f:06d}.png", depth)
        save_image(d / f"mask_{f:06d}.png", np.repeat(mask[..., None], 3, 2))
        rows.append({"id": f"{clip}/{f}", "rgb": f"{key}/rgb_{f:06d}.png", "depth": f"{key}/depth_{f:06d}.png",
                     "mask": f"{key}/mask_{f:06d}.png", "landmarks": None, "identity": ident, "clip": clip, "frame": f,
                     "source": source, "audio": wav, "audio_features": None, "fps": 25.0 if wav else None, "size": size,
                     "camera": {}, "depth_unit_mm": 0.1, "input": key, "box": None, "view": None})

    for i in range(identities):
        ident, color = f"person{i}", colors[i % len(colors)]
        n = 1 if single and ident in single else frames
        wav = None
        if audio:
            t = np.arange(n * 640) / 16000.0
            write_wav(root / f"{ident}_audio.wav", 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) * np.sin(2 * np.pi * 2 * t))
            wav = f"{ident}_audio.wav"
        for f in range(n):
            add(ident, ident, ident, f, "wild", size / 2 + 1.5 * np.sin(f), size / 2 + np.cos(f), color, wav)
        for k in range(studio_per_identity):
            add(f"{ident}-studio", ident, f"{ident}-studio", k, "studio", size / 2 - 2 + k, size / 2, color)
    (root / "dataset.json").write_text(json.dumps({"format": "rgbdface-dataset", "version": 1}))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
