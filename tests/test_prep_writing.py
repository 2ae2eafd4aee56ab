"""The pieces prep-depth's speed rests on: the PNG encoder, the background writer, depth-only rasterising."""

from __future__ import annotations

import io
import threading
import time

import imageio.v3 as iio
import numpy as np
import pytest

from rgbdface.data.io import encode_jpeg, encode_png
from rgbdface.data.raster import rasterize
from rgbdface.data.writer import BackgroundWriter


@pytest.mark.parametrize("shape,dtype", [((37, 53), np.uint16), ((40, 31), np.uint8), ((20, 33, 3), np.uint8), ((1, 1), np.uint16)])
def test_encode_png_round_trips_losslessly(shape, dtype):
    a = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    back = iio.imread(io.BytesIO(encode_png(a)))
    assert back.dtype == dtype and np.array_equal(back, a)


@pytest.mark.parametrize("shape,dtype", [((37, 53), np.uint8), ((20, 33, 3), np.uint8), ((20, 33, 4), np.uint8)])
def test_save_image_writes_what_it_was_given(tmp_path, shape, dtype):
    """PNGs go through the fast encoder (RGBA through imageio); every form reads back as written."""
    from rgbdface.data.io import save_image

    a = np.random.default_rng(1).integers(0, 255, shape, dtype=dtype, endpoint=True)
    back = iio.imread(save_image(tmp_path / "x.png", a))
    assert np.array_equal(back, a)


def test_save_depth16_writes_16_bit_png(tmp_path):
    from rgbdface.data.io import load_depth, save_depth16

    d = np.random.default_rng(2).integers(0, 65535, (41, 29), dtype=np.uint16, endpoint=True)
    path = save_depth16(tmp_path / "d.png", d)
    assert iio.imread(path).dtype == np.uint16 and np.array_equal(load_depth(path), d.astype(np.float32))


def test_encode_png_refuses_other_arrays():
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(np.zeros((4, 4), np.float32))


def test_encode_jpeg_keeps_colours(astronaut):
    back = iio.imread(io.BytesIO(encode_jpeg(astronaut[:128, :128])))
    assert back.shape == (128, 128, 3) and np.abs(back.astype(int) - astronaut[:128, :128]).mean() < 3  # RGB, not BGR


@pytest.mark.parametrize("threads", [0, 2])
def test_writer_keeps_submission_order_and_raises_the_first_error(threads):
    names = []
    with BackgroundWriter(threads, max_pending=2) as w:
        for i in range(6):
            w.submit(lambda i=i: (time.sleep(0.01 * (6 - i)), names.append(threading.current_thread().name), i)[2])
        assert w.results() == list(range(6))
    assert len(names) == 6 and (threads == 0) == all(n == threading.current_thread().name for n in names)
    with pytest.raises(ZeroDivisionError):
        with BackgroundWriter(threads) as w:
            w.submit(lambda: 1)
            w.submit(lambda: 1 / 0)
            w.results()


def test_writer_is_empty_after_an_error_and_can_discard():
    with BackgroundWriter(1) as w:
        w.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            w.results()
        w.submit(lambda: 2)
        assert w.results() == [2]  # the failed task is gone
        started = threading.Event()
        w.submit(lambda: (started.set(), time.sleep(0.05)))
        late = w.submit(lambda: 3)
        started.wait()
        w.discard()
        assert late.cancelled() and w.results() == []


def test_depth_only_raster_matches_the_full_one():
    rng = np.random.default_rng(3)
    verts = np.column_stack([rng.uniform(0, 64, 40), rng.uniform(0, 64, 40), rng.uniform(400, 600, 40)])
    tris = rng.integers(0, 40, (60, 3))
    full, lean = rasterize(verts, tris, 64, 64), rasterize(verts, tris, 64, 64, with_bary=False)
    assert full.covered.sum() > 500
    assert np.array_equal(full.face, lean.face) and np.array_equal(full.depth, lean.depth)
    assert not lean.bary.any()
    np.testing.assert_allclose(full.bary[full.covered].sum(1), 1.0, atol=1e-5)


def _idat_stream(png: bytes) -> bytes:
    """The zlib stream of a PNG's IDAT chunks, each chunk's CRC checked."""
    import struct
    import zlib

    pos, out = 8, b""
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", png[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + data)
        out += data if kind == b"IDAT" else b""
        pos += 12 + n
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("rows", ["none", "all", "middle", "first and last", "top", "bottom", "one pixel"])
def test_encode_png_splices_blank_rows_losslessly(dtype, rows):
    import zlib

    h, w = 77, 41
    a = np.zeros((h, w), dtype)
    filled = {"none": [], "all": range(h), "middle": range(20, 50), "first and last": [0, h - 1], "top": range(0, 9), "bottom": range(60, h), "one pixel": [38]}[rows]
    rng = np.random.default_rng(len(filled))
    for r in filled:
        a[r, 5:30] = rng.integers(1, np.iinfo(dtype).max, 25, dtype=dtype, endpoint=True)
    png = encode_png(a)
    back = iio.imread(io.BytesIO(png))
    assert back.dtype == dtype and np.array_equal(back, a)
    raw = zlib.decompress(_idat_stream(png))  # raises on a wrong Adler-32 or a truncated stream
    assert len(raw) == h * (1 + w * np.dtype(dtype).itemsize)
    assert encode_png(a) == png  # the second time the blank rows come from the cache


def _reference_raster(verts: np.ndarray, tris: np.ndarray, h: int, w: int):
    """Triangle by triangle over every pixel centre: face ids, depth, and where the answer is clear-cut
    (no centre within rounding of an edge, no two surfaces at nearly the same depth)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    best_z = np.full((h, w), np.inf)
    face = np.full((h, w), -1)
    clear = np.ones((h, w), bool)
    zs = []
    for i, (a, b, c) in enumerate(verts[tris]):
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < 1e-9 or min(a[2], b[2], c[2]) <= 0:
            continue
        edge = lambda p, q: ((q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])) / area
        bary = np.stack([edge(b, c), edge(c, a), edge(a, b)])  # screen-space barycentrics of a, b, c
        clear &= (np.abs(bary) > 1e-5).all(0) | (bary < -1e-5).any(0)
        inside = (bary >= 0).all(0)
        z = 1.0 / np.einsum("kij,k->ij", bary, 1.0 / np.array([a[2], b[2], c[2]]))
        zs.append(np.where(inside, z, np.inf))
        nearer = inside & (z < best_z)
        best_z[nearer], face[nearer] = z[nearer], i
    if len(zs) > 1:
        zs = np.sort(np.stack(zs), 0)
        with np.errstate(invalid="ignore"):  # inf - inf where no surface
            clear &= ~(zs[1] - zs[0] < 1e-3 * zs[0])
    return face, np.where(face >= 0, best_z, 0.0), clear


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_raster_matches_a_triangle_by_triangle_reference(seed):
    rng = np.random.default_rng(seed)
    verts = np.column_stack([rng.uniform(-8, 56, 30), rng.uniform(-8, 56, 30), rng.uniform(-100, 600, 30)])  # some behind the camera
    tris = rng.integers(0, 30, (50, 3))
    face, depth, clear = _reference_raster(verts, tris, 48, 48)
    r = rasterize(verts, tris, 48, 48)
    assert clear.mean() > 0.9 and (face[clear] >= 0).sum() > 300
    assert np.array_equal(r.face[clear], face[clear])
    np.testing.assert_allclose(r.depth[clear], depth[clear], rtol=1e-6)
    # perspective-correct barycentrics interpolate the corners' Z back to the pixel's depth
    z = np.einsum("pk,pk->p", r.bary[r.covered], verts[tris[r.face[r.covered]], 2])
    np.testing.assert_allclose(z, r.depth[r.covered], rtol=1e-5)


def test_atomic_files_get_the_umask_permissions_not_the_temporary_ones(tmp_path):
    import os
    import stat

    from rgbdface.utils import atomic_path, atomic_write_bytes

    plain = tmp_path / "plain"
    plain.write_bytes(b"x")  # what open() gives a new file under this process's umask
    with atomic_path(tmp_path / "a.png") as tmp:
        tmp.write_bytes(b"y")
    atomic_write_bytes(tmp_path / "b.png", b"z")
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (plain, tmp_path / "a.png", tmp_path / "b.png")}
    assert len(modes) == 1 and modes != {0o600} or os.umask(os.umask(0)) == 0o177
