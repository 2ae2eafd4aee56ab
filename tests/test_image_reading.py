"""Reading images safely: CMYK JPEGs in true colour, the first frame only of animations, a pixel limit
checked before decoding, and no hanging on pipes."""

import os
import struct
import threading
import tracemalloc
import zlib

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.io import MAX_PIXELS_ENV, load_depth, load_image
from rgbdface.utils import InputError

runner = CliRunner()


def test_cmyk_jpeg_reads_as_the_colours_it_shows(astronaut, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(astronaut).convert("CMYK").save(path, quality=95)  # Adobe-style CMYK JPEG
    assert Image.open(path).mode == "CMYK"
    rgb = load_image(path)
    assert rgb.shape == astronaut.shape and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - astronaut).mean() < 3  # not a colour negative (that is off by ~145)


def test_relight_of_a_cmyk_portrait_is_not_inverted(astronaut, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(astronaut).convert("CMYK").save(path, quality=95)
    depth = np.zeros(astronaut.shape[:2], np.uint16)
    depth[100:300, 150:350] = 30000
    iio.imwrite(tmp_path / "d.png", depth)
    r = runner.invoke(app, ["relight", str(path), "--depth", str(tmp_path / "d.png"), "-l", "0,0,1", "-a", "1", "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 0, r.output
    out = iio.imread(tmp_path / "o.png").astype(int)
    outside = depth == 0  # unchanged there: the image's own colours
    assert np.abs(out[outside] - astronaut[outside]).mean() < 3


def test_animated_gif_decodes_only_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((256, 256, 3), 10 + i, np.uint8)) for i in range(200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40)
    tracemalloc.start()
    img = load_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert img.shape == (256, 256, 3) and abs(int(img[0, 0, 0]) - 10) <= 2  # the first frame
    assert peak < 3 * 256 * 256 * 3, peak  # not 200 frames (39 MB)


def _bilevel_png(path, side):
    """A real, valid 1-bit PNG of side x side black pixels: a few KB on disk, side² pixels decoded."""
    row = b"\0" + bytes((side + 7) // 8)
    idat = zlib.compress(row * side, 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    bomb = _bilevel_png(tmp_path / "bomb.png", 12000)  # 144 megapixels in ~20 KB
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    with pytest.raises(InputError, match=r"12000 x 12000 is 144.0 megapixels, over the limit of 50; downscale"):
        load_image(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000
    with pytest.raises(InputError, match="megapixels"):
        load_depth(bomb)
    with open(tmp_path / "big.npy", "wb") as f:  # a valid 256 MB .npy, sparse on disk
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (8000, 8000)})
        f.truncate(f.tell() + 8000 * 8000 * 4)
    with pytest.raises(InputError, match="8000 x 8000"):
        load_depth(tmp_path / "big.npy")
    # the limit is documented and can be changed
    small = tmp_path / "small.png"
    iio.imwrite(small, np.zeros((40, 50, 3), np.uint8))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(InputError, match=f"50 x 40 .* raise {MAX_PIXELS_ENV}"):
        load_image(small)
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    assert load_image(small).shape == (40, 50, 3)


def test_relight_refuses_a_huge_image_before_reading_it(tmp_path):
    bomb = _bilevel_png(tmp_path / "bomb.png", 12000)
    r = runner.invoke(app, ["relight", str(bomb), "-l", "0,0,1", "--depth", str(bomb), "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 1 and "megapixels" in r.stderr, r.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            load_image(fifo)
        except InputError as e:
            result["error"] = str(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the reader so the test run can end
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert "not a regular file" in result["error"]
    with pytest.raises(InputError, match="not a regular file"):
        load_depth(fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_prep_depth_refuses_a_fifo_named_like_a_video(portrait_path, tmp_path):
    from rgbdface.data.prep import PrepConfig, prepare_dataset

    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    result = {}
    t = threading.Thread(target=lambda: result.update(s=prepare_dataset([fifo, portrait_path], tmp_path / "data", PrepConfig(size=64))),
                         daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():
        with open(fifo, "wb"):
            pass
        pytest.fail("prep-depth blocked on a FIFO")
    summary = result["s"]
    assert summary.done == 1 and len(summary.failed) == 1 and "not a regular file" in summary.failed[0][1]
