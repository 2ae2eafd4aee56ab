"""The shell examples that fit on a CPU run end to end with the bundled model."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path):
    """PATH with an `rgbdface` command (the installed one, or this interpreter's module)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if shutil.which("rgbdface") is None:
        shim = bin_dir / "rgbdface"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rgbdface.cli.app "$@"\n')
        shim.chmod(0o755)
    # one thread per process: the examples run several rgbdface processes side by side (xargs -P)
    e = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return e


@pytest.fixture
def portraits_dir(tmp_path):
    d = tmp_path / "portraits"
    d.mkdir()
    shutil.copy(ROOT / "examples" / "astronaut.jpg", d)
    return d


def test_portraits_to_meshes(env, portraits_dir, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(["bash", str(ROOT / "examples" / "portraits_to_meshes.sh"), str(portraits_dir), str(out)],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    import trimesh

    mesh = trimesh.load(next(out.glob("*.ply")))
    assert len(mesh.faces) > 100
    assert iio.imread(out / "astronaut.png").dtype.name == "uint16"


def test_relight_folder(env, portraits_dir, tmp_path):
    out = tmp_path / "lit"
    p = subprocess.run(["bash", str(ROOT / "examples" / "relight_folder.sh"), str(portraits_dir), str(out)],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    lit = sorted(out.glob("astronaut.light_*.png"))
    assert len(lit) == 3
    a, b = iio.imread(lit[0]), iio.imread(lit[1])
    assert a.shape == b.shape and (a != b).any()  # different lights, different images


def test_shell_examples_are_valid_bash():
    for f in list((ROOT / "examples").glob("*.sh")) + list((ROOT / "examples").glob("*.sbatch")):
        p = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert p.returncode == 0, (f.name, p.stderr)
