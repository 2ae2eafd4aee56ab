"""Frames per second of prep-depth against MediaPipe alone on the same frames.

Frames: the shipped portraits, each as a 720p frame (portrait scaled to 560 px high
on a grey canvas). "MediaPipe alone" runs exactly the MediaPipe calls prep-depth
makes per frame (face detection on the frame, face mesh on the crop); "prep-depth"
adds cropping, rasterising depth and mask, and writing the sample's files.

    python benchmarks/bench_prep_depth.py [--size 512] [--repeats 10]

Prints a Markdown table on stdout and writes it to benchmarks/results/prep_depth.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def frames() -> list[np.ndarray]:
    import cv2

    from rgbdface.data.io import load_image

    out = []
    for p in sorted((ROOT / "examples").glob("*.[jp][pn]g")):
        img = load_image(p)
        img = cv2.resize(img, (round(img.shape[1] * 560 / img.shape[0]), 560), interpolation=cv2.INTER_AREA)
        canvas = np.full((720, 1280, 3), 128, np.uint8)
        x = (1280 - img.shape[1]) // 2
        canvas[80:640, x : x + img.shape[1]] = img
        out.append(canvas)
    return out


def mediapipe_only(frame: np.ndarray, size: int, margin: float) -> None:
    from rgbdface.data import face

    box = face.square_box(face.detect_faces(frame)[0], margin)
    crop = face.crop_box_to(frame, box, size)  # the mesh needs the crop it runs on; a ~1 ms warp
    face._mesh(crop)


def prep_depth(frame: np.ndarray, size: int, margin: float, out: Path, i: int, rgb_format: str) -> None:
    from rgbdface.data.depth import render_face_depth
    from rgbdface.data.face import crop_face
    from rgbdface.data.prep import write_sample

    crop = crop_face(frame, size, margin, with_landmarks=True)
    fd = render_face_depth(crop.landmarks, size)
    write_sample(out, "bench", i, crop.image, fd.depth, fd.mask, crop.landmarks, rgb_format)


def timed(fn, items, repeats: int) -> float:
    fn(items[0])  # warm up (graphs, caches)
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for it in items:
            fn(it)
            n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    from rgbdface.data.face import DEFAULT_MARGIN

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "prep_depth.md")
    args = ap.parse_args()

    items = frames()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = timed(lambda f: mediapipe_only(f, args.size, DEFAULT_MARGIN), items, args.repeats)
        rows.append(("MediaPipe alone (detect + mesh)", base, None))
        counter = iter(range(10**9))
        for fmt in ("jpg", "png"):
            fps = timed(lambda f: prep_depth(f, args.size, DEFAULT_MARGIN, Path(tmp), next(counter), fmt), items, args.repeats)
            rows.append((f"prep-depth, RGB as {fmt}", fps, (base / fps - 1) * 100))
    lines = [
        f"# prep-depth throughput ({len(items)} frames of 1280x720, crop {args.size}, {args.repeats} repeats, one process)",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores",
        "",
        "| pipeline | frames/s | ms/frame | overhead vs MediaPipe |",
        "|---|---:|---:|---:|",
    ]
    for name, fps, over in rows:
        lines.append(f"| {name} | {fps:.1f} | {1000 / fps:.1f} | {'-' if over is None else f'{over:+.0f}%'} |")
    lines += ["", "Goal: cropping, rasterising and writing add at most 25% on top of MediaPipe."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
