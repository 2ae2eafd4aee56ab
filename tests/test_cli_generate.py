"""`rgbdface generate` and `rgbdface init-model` end to end, on real files."""

import numpy as np
import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app

runner = CliRunner()


def test_generate_writes_valid_files(tiny_model_dir, portrait_path, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(out), "-n", "2", "--steps", "2",
                            "--model", str(tiny_model_dir), "--guidance", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # stdout carries data or nothing
    for i in range(2):
        rgb = iio.imread(out / f"astronaut_{i:02d}_rgb.png")
        depth = iio.imread(out / f"astronaut_{i:02d}_depth.png")
        preview = iio.imread(out / f"astronaut_{i:02d}_preview.png")
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
        assert depth.shape == (32, 32) and depth.dtype == np.uint16
        assert preview.shape == (32, 64, 3)
        # 0 = no depth; valid depth is 1..65535
        assert depth.max() >= 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"astronaut_{i:02d}_{k}.png" for i in range(2) for k in ("rgb", "depth", "preview"))
    # Same seed, same files.
    out2 = tmp_path / "out2"
    runner.invoke(app, ["generate", str(portrait_path), "-o", str(out2), "-n", "2", "--steps", "2",
                        "--model", str(tiny_model_dir), "--guidance", "2", "--quiet"])
    assert np.array_equal(iio.imread(out / "astronaut_01_depth.png"), iio.imread(out2 / "astronaut_01_depth.png"))


@pytest.mark.parametrize("kind", ["missing", "not_image", "no_face"])
def test_generate_bad_input_one_line_error_and_nothing_written(kind, tiny_model_dir, tmp_path):
    src = tmp_path / "in.jpg"
    if kind == "not_image":
        src.write_text("this is not a JPEG")
    elif kind == "no_face":
        iio.imwrite(src, np.full((96, 96, 3), 200, np.uint8))
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", str(src), "-o", str(out), "--steps", "1", "--model", str(tiny_model_dir)])
    assert r.exit_code != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rgbdface: error:") and str(src) in err[0], r.stderr
    assert not out.exists()


def test_generate_bad_model_and_options(tiny_model_dir, portrait_path, tmp_path):
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path)])
    assert r.exit_code == 1 and "not an rgbdface model folder" in r.stderr
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir),
                            "--scheduler", "bogus", "--steps", "1"])
    assert r.exit_code == 2 and "unknown scheduler" in r.stderr  # a bad option value
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "o"), "--guidance", "0.5"])
    assert r.exit_code == 2
    assert not (tmp_path / "o").exists()


def test_init_model_tiny_then_generate(tmp_path, portrait_path):
    model = tmp_path / "m"
    r = runner.invoke(app, ["init-model", "--tiny", "--image-size", "32", "-o", str(model), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (model / "rgbdface.json").is_file()
    r = runner.invoke(app, ["init-model", "--tiny", "-o", str(model)])
    assert r.exit_code == 1 and "--overwrite" in r.stderr
    r = runner.invoke(app, ["init-model", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "exactly one" in r.stderr  # a usage error
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "g"), "-n", "1", "--steps", "1", "-m", str(model)])
    assert r.exit_code == 0 and "not been trained" in r.stderr


def test_init_model_from_sd15_folder(sd15_dir, tmp_path):
    r = runner.invoke(app, ["init-model", "--base", str(sd15_dir), "--image-size", "32", "-o", str(tmp_path / "m"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["init-model", "--base", str(tmp_path), "-o", str(tmp_path / "m2")])
    assert r.exit_code == 1 and "missing" in r.stderr and not (tmp_path / "m2").exists()


def test_help_is_fast_and_lists_commands():
    import subprocess
    import sys
    import time

    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", "import sys; from rgbdface.cli.app import app; sys.argv=['rgbdface','--help']; app()"],
                       capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    assert p.returncode == 0 and "generate" in p.stdout and "init-model" in p.stdout
    # Heavy libraries are not imported for --help.
    p2 = subprocess.run([sys.executable, "-c", "import sys; import rgbdface.cli.app; print(sorted(m for m in ('torch','diffusers','mediapipe','transformers') if m in sys.modules))"],
                        capture_output=True, text=True)
    assert p2.stdout.strip() == "[]", p2.stdout
    assert elapsed < 20
