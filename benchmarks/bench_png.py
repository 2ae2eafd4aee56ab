"""PNG encoding of prep-depth's depth maps and masks: the spliced encoder against simpler ones.

Maps: the depth (16-bit) and mask (8-bit) prep-depth writes for each shipped portrait,
cropped at --size as prep-depth does. Encoders, side by side in one run, interleaved
pass by pass (a busy machine slows them alike), CPU ms per map (median pass):

- spliced:  `rgbdface.data.png.encode_png` (Up filter; blank rows above and below the face
            spliced in from cached deflate pieces, only the face band deflated)
- simple:   the same Up filter and zlib level, the whole image deflated in one call
- Pillow:   `PIL.Image.save(format="PNG", compress_level=1)` (what imageio writes with)
- OpenCV:   `cv2.imencode(".png", IMWRITE_PNG_COMPRESSION=1)`

Every encoder's output is decoded and checked equal to its input.

    python benchmarks/bench_png.py [--size 512] [--repeats 30]

Prints a Markdown table on stdout and writes it to benchmarks/results/png.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import struct
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def encode_simple(img: np.ndarray, level: int = 1) -> bytes:
    """Up filter on every row, one zlib.compress of the whole: the encoder without splicing."""
    from rgbdface.data.png import FILTER_UP, PNG_SIGNATURE, _chunk

    h, w = img.shape[:2]
    raw = np.ascontiguousarray(img, dtype=img.dtype.newbyteorder(">")).view(np.uint8).reshape(h, -1)
    rows = np.empty((h, raw.shape[1] + 1), np.uint8)
    rows[:, 0] = FILTER_UP
    rows[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, img.dtype.itemsize * 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, level)) + _chunk(b"IEND", b"")


def encode_pillow(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_opencv(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return buf.tobytes()


def maps(size: int) -> list[tuple[str, np.ndarray]]:
    from rgbdface.data.camera import depth_to_u16
    from rgbdface.data.depth import render_face_depth
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image

    out = []
    for p in sorted((ROOT / "examples").glob("*.[jp][pn]g")):
        crop = crop_face(load_image(p), size, with_landmarks=True)
        fd = render_face_depth(crop.landmarks, size)
        out += [("depth", depth_to_u16(fd.depth)), ("mask", fd.mask.astype(np.uint8) * 255)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    from rgbdface.data.io import load_depth
    from rgbdface.data.png import encode_png

    items = maps(args.size)
    encoders = {"spliced (rgbdface.data.png)": encode_png, "simple (one zlib.compress)": encode_simple, "Pillow": encode_pillow}
    try:
        import cv2  # noqa: F401

        encoders["OpenCV"] = encode_opencv
    except ImportError:
        pass

    # Each encoder decodes back to its input.
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_png_{os.getpid()}.png"
    sizes: dict[str, dict[str, list[int]]] = {name: {"depth": [], "mask": []} for name in encoders}
    for name, enc in encoders.items():
        for kind, img in items:
            data = enc(img)
            tmp.write_bytes(data)
            assert np.array_equal(load_depth(tmp), img), f"{name} does not round-trip a {kind} map"
            sizes[name][kind].append(len(data))
    tmp.unlink()

    times: dict[str, dict[str, list[float]]] = {name: {"depth": [], "mask": []} for name in encoders}
    for _ in range(args.repeats):
        for name, enc in encoders.items():
            for kind in ("depth", "mask"):
                subset = [img for k, img in items if k == kind]
                t0 = time.process_time()
                for img in subset:
                    enc(img)
                times[name][kind].append(1000 * (time.process_time() - t0) / len(subset))

    med = {name: {k: float(np.median(v)) for k, v in t.items()} for name, t in times.items()}
    base = med["spliced (rgbdface.data.png)"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# PNG encoding of prep-depth's maps ({len(items) // 2} portraits, crop {args.size}, {args.repeats} interleaved passes)",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores, "
        f"1-minute load average {load:.1f} after the run. CPU ms per map, median pass; every output decodes to its input.",
        "",
        "| encoder | depth ms | mask ms | depth + mask ms per frame | vs spliced | depth KiB | mask KiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in encoders:
        m = med[name]
        both, ref = m["depth"] + m["mask"], base["depth"] + base["mask"]
        lines.append(f"| {name} | {m['depth']:.3f} | {m['mask']:.3f} | {both:.3f} | {both - ref:+.3f} | "
                     f"{np.mean(sizes[name]['depth']) / 1024:.1f} | {np.mean(sizes[name]['mask']) / 1024:.1f} |")
    saved = med["simple (one zlib.compress)"]["depth"] + med["simple (one zlib.compress)"]["mask"] - base["depth"] - base["mask"]
    share = saved / (med["simple (one zlib.compress)"]["depth"] + med["simple (one zlib.compress)"]["mask"])
    lines += ["", f"Splicing saves {saved:.2f} CPU ms per frame (depth + mask), {100 * share:.0f}% of the simple encoder's time; "
              f"prep-depth spends about 12.5 CPU ms per frame in all (benchmarks/results/prep_depth.md), so "
              + ("the splicing pays and is kept." if saved >= 0.1 else "the splicing does not pay.")]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / "png.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
