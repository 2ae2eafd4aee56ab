"""A fast, lossless PNG encoder for prep-depth's depth maps and masks.

A face crop's depth map and mask are zero outside the face: typically half of the
rows are blank. Rows use PNG's "Up" filter, so a blank row (after the first) filters
to its filter byte and zeros whatever its neighbours; the encoder deflates only the
rows between the first and last non-blank filtered rows, and splices in the blank
runs above and below as deflate pieces compressed once and cached. The file is a
standard PNG (one zlib stream in one IDAT chunk) that decodes to exactly the input.

Deflate allows this splicing: a piece compressed on its own and ended with a sync
flush is a byte-aligned run of complete, non-final blocks that refers to nothing
before it, so pieces can follow each other; a final empty block closes the stream.
The zlib trailer's Adler-32 of the whole is combined from the pieces' checksums.

Why hand-written: benchmarks/bench_png.py measures it against the same filter with one
zlib.compress, Pillow and OpenCV on prep-depth's maps; benchmarks/results/png.md records
what the splicing saves per frame.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2  # PNG row filter "Up": each byte minus the byte above it
_ADLER_MOD = 65521
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" level flag
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # BFINAL = 1, fixed Huffman, end-of-block only


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """A PNG file's bytes for uint8 (gray or RGB) or uint16 (gray) arrays [H, W(, 3)], losslessly.

    Rows use PNG's "Up" filter and zlib at `level` (1 = fastest); leading and trailing
    blank rows are spliced in from a cache (see the module docstring).
    """
    img = np.asarray(img)
    if img.dtype not in (np.uint8, np.uint16) or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"encode_png expects uint8/uint16 [H, W] or [H, W, 3], got {img.dtype} {img.shape}")
    if not 0 <= level <= 9:
        raise ValueError(f"encode_png: level must be in 0..9, got {level}")
    h, w = img.shape[:2]
    bits = img.dtype.itemsize * 8
    colour = 2 if img.ndim == 3 else 0  # PNG colour type: 2 = RGB, 0 = gray
    row_bytes = 1 + w * bits // 8 * (3 if colour == 2 else 1)  # filter byte, then big-endian samples
    # 1. The band of rows that do not filter to blanks: from the first row with a non-zero
    #    sample to the row below the last one (whose "Up" difference is not zero)
    used = np.flatnonzero(img.reshape(h, -1).any(1))
    top = int(used[0]) if len(used) else h
    end = min(int(used[-1]) + 2, h) if len(used) else h
    # 2. The band's filtered rows [end - top, row_bytes]; its first row has only zeros (or
    #    nothing) above it, so it filters to itself
    pieces = [_blank_rows(row_bytes, top, level)]
    if top < end:
        raw = np.ascontiguousarray(img[top:end], dtype=img.dtype.newbyteorder(">")).view(np.uint8).reshape(end - top, -1)
        rows = np.empty((end - top, row_bytes), np.uint8)
        rows[:, 0] = FILTER_UP
        rows[0, 1:] = raw[0]
        np.subtract(raw[1:], raw[:-1], out=rows[1:, 1:])
        # 3. The zlib stream: cached blank rows on top, the band deflated, cached blank rows below
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        pieces.append((c.compress(rows) + c.flush(zlib.Z_SYNC_FLUSH), zlib.adler32(rows), rows.size))
    pieces.append(_blank_rows(row_bytes, h - end, level))
    adler = 1  # of nothing
    for _, a, n in pieces:
        adler = _adler32_combine(adler, a, n)
    idat = b"".join([_ZLIB_HEADER, *(d for d, _, _ in pieces), _FINAL_EMPTY_BLOCK, struct.pack(">I", adler)])
    header = struct.pack(">IIBBBBB", w, h, bits, colour, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _blank_rows(row_bytes: int, count: int, level: int) -> tuple[bytes, int, int]:
    """`count` blank filtered rows as spliceable deflate pieces: (deflated, Adler-32, length)."""
    out, adler = [], 1
    for bit in range(count.bit_length()):  # powers of two, each cached
        if count >> bit & 1:
            data, a, n = _blank_rows_cached(row_bytes, 1 << bit, level)
            out.append(data)
            adler = _adler32_combine(adler, a, n)
    return b"".join(out), adler, count * row_bytes


@functools.lru_cache(maxsize=256)
def _blank_rows_cached(row_bytes: int, count: int, level: int) -> tuple[bytes, int, int]:
    rows = np.zeros((count, row_bytes), np.uint8)
    rows[:, 0] = FILTER_UP
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(rows) + c.flush(zlib.Z_SYNC_FLUSH), zlib.adler32(rows), rows.size


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of data1 + data2 from the checksums of each (A = 1 + sum of bytes, B = sum of the A's)."""
    a1, b1 = adler1 & 0xFFFF, adler1 >> 16
    a2, b2 = adler2 & 0xFFFF, adler2 >> 16
    a = (a1 + a2 - 1) % _ADLER_MOD
    b = (b1 + b2 + len2 * (a1 - 1)) % _ADLER_MOD
    return b << 16 | a


def add_png_text(png: bytes, text: dict[str, str]) -> bytes:
    """The PNG with uncompressed text chunks (tEXt, Latin-1 key → value) inserted after its header,
    so that `read_png_text` finds them without reading the image data."""
    if not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("add_png_text: not a PNG with its header first")
    end = len(PNG_SIGNATURE) + 8 + 13 + 4  # after the IHDR chunk
    chunks = b"".join(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")) for key, value in text.items())
    return png[:end] + chunks + png[end:]


def read_png_text(path) -> dict[str, str]:
    """The tEXt chunks before a PNG file's image data (key → value); {} for a PNG without them.

    Raises ValueError for a file that is not a PNG."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise ValueError(f"{path}: not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                return out
            length, kind = struct.unpack(">I", head[:4])[0], head[4:]
            if kind in (b"IDAT", b"IEND"):
                return out
            data = f.read(length)
            f.read(4)  # CRC
            if kind == b"tEXt" and b"\0" in data:
                key, value = data.split(b"\0", 1)
                out[key.decode("latin-1")] = value.decode("latin-1")
