"""The bundled default model rgbdface-tiny: it loads, and every inference command gives valid output with it."""

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from motion_helpers import speech_like, write_wav
from rgbdface.cli.app import app
from rgbdface.models.model import BUNDLED_MODEL, load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def bundled():
    return load_model()


def test_bundled_model_is_complete_and_small(bundled):
    assert bundled.meta.stages == [0, 1, 2, 3]
    assert bundled.masked is not None and bundled.motion is not None
    size = sum(f.stat().st_size for f in BUNDLED_MODEL.rglob("*.safetensors"))
    assert size < 20 * 2**20
    assert not [f for f in BUNDLED_MODEL.rglob("*") if f.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]


def test_estimate_depth_with_the_bundled_model(portrait_path, tmp_path):
    out = tmp_path / "d.png"
    r = runner.invoke(app, ["estimate-depth", str(portrait_path), "-o", str(out), "--steps", "4", "-q"])
    assert r.exit_code == 0, r.stderr
    d = iio.imread(out)
    src = iio.imread(portrait_path)
    assert d.dtype == np.uint16 and d.shape == src.shape[:2]
    face = d > 0
    assert 0.01 < face.mean() < 0.6  # depth on the face only
    assert d[face].std() > 0  # not flat


def test_generate_depth2img_relight_with_the_bundled_model(portrait_path, tmp_path):
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "g"), "-n", "1", "--steps", "4", "-q"])
    assert r.exit_code == 0, r.stderr
    rgb = iio.imread(tmp_path / "g" / "astronaut_00_rgb.png")
    assert rgb.shape == (64, 64, 3) and rgb.std() > 1

    r = runner.invoke(app, ["relight", str(portrait_path), "--light", "1,0,1", "-o", str(tmp_path / "lit.png"),
                            "--steps", "4", "-q"])
    assert r.exit_code == 0, r.stderr
    lit, src = iio.imread(tmp_path / "lit.png"), iio.imread(portrait_path)
    assert lit.shape == src.shape and np.isfinite(lit).all() and (lit != src).any()

    runner.invoke(app, ["estimate-depth", str(portrait_path), "-o", str(tmp_path / "d.png"), "--steps", "4", "-q"])
    r = runner.invoke(app, ["depth2img", str(tmp_path / "d.png"), "--reference", str(portrait_path),
                            "-o", str(tmp_path / "edit.png"), "--steps", "4", "-q"])
    assert r.exit_code == 0, r.stderr
    img = iio.imread(tmp_path / "edit.png")
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 1


def test_talk_with_the_bundled_model(portrait_path, tmp_path):
    wav = write_wav(tmp_path / "speech.wav", speech_like(0.6))
    out = tmp_path / "talk.mp4"
    r = runner.invoke(app, ["talk", str(portrait_path), str(wav), "-o", str(out), "--depth-frames", str(tmp_path / "df"),
                            "--mesh-frames", str(tmp_path / "meshes"), "--steps", "2", "-q"])
    assert r.exit_code == 0, r.stderr
    frames = sorted((tmp_path / "df").glob("*.png"))
    assert len(frames) == 15  # ceil(0.6 s × 25)
    assert all(iio.imread(f).dtype == np.uint16 for f in frames[:2])
    assert out.stat().st_size > 0
    import trimesh

    meshes = sorted((tmp_path / "meshes").glob("*.ply"))
    with_depth = [f for f in frames if (iio.imread(f) > 0).any()]
    assert len(meshes) == len(with_depth) and len(trimesh.load(meshes[0]).faces) > 0


def test_eval_runs_the_bundled_model_against_baselines(portrait_dataset):
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "model", "--method", "plane",
                            "--steps", "4", "--format", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    for v in res.values():
        assert v["n_images"] == 2 and np.isfinite([v["abs_rel"], v["delta1"], v["rmse"]]).all()


def test_python_api_example_runs(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, str(root / "examples" / "python_api.py"), str(root / "examples" / "astronaut.jpg"),
                        str(tmp_path)], capture_output=True, text=True, cwd=root)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "depth.png").is_file() and (tmp_path / "relit.png").is_file()
