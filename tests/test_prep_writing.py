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


def test_depth_only_raster_matches_the_full_one():
    rng = np.random.default_rng(3)
    verts = np.column_stack([rng.uniform(0, 64, 40), rng.uniform(0, 64, 40), rng.uniform(400, 600, 40)])
    tris = rng.integers(0, 40, (60, 3))
    full, lean = rasterize(verts, tris, 64, 64), rasterize(verts, tris, 64, 64, with_bary=False)
    assert full.covered.sum() > 500
    assert np.array_equal(full.face, lean.face) and np.array_equal(full.depth, lean.depth)
    assert not lean.bary.any()
    np.testing.assert_allclose(full.bary[full.covered].sum(1), 1.0, atol=1e-5)
