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


def _recipe_calls(tmp_path, procs: int):
    """Run train_sd15_multigpu.sh with `accelerate` and `rgbdface` stubs that record their arguments."""
    bin_dir, log = tmp_path / f"stubs{procs}", tmp_path / f"calls{procs}.txt"
    bin_dir.mkdir()
    for name in ("accelerate", "rgbdface"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    p = subprocess.run(["bash", str(ROOT / "examples" / "train_sd15_multigpu.sh"), "videos", "sd15", str(tmp_path / "runs"),
                        str(procs)], env=env, capture_output=True, text=True)
    return p, (log.read_text().splitlines() if log.exists() else [])


@pytest.mark.parametrize("procs", [1, 2, 4, 8, 16, 32])
def test_multigpu_recipe_keeps_the_papers_global_batch(tmp_path, procs):
    """Stages 1-2: per-GPU batch x accumulation x processes = 32 (the paper's), however many GPUs."""
    import json

    from rgbdface.training.config import resolve_config

    p, calls = _recipe_calls(tmp_path, procs)
    assert p.returncode == 0, p.stderr
    launches = {line.split(" -m rgbdface.cli.app ")[1].split()[0]: line.split() for line in calls if line.startswith("accelerate")}
    assert set(launches) == {"train", "finetune-mask", "train-motion"}
    for command, stage in (("train", 1), ("finetune-mask", 2), ("train-motion", 3)):
        args = launches[command]
        n = int(args[args.index("--num_processes") + 1])
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        cfg = resolve_config(stage, "sd15", sets)  # what the run resolves: the recipe with the script's --set on top
        assert n == procs and ("--multi_gpu" in args) == (procs > 1)
        global_batch = cfg.optim.batch_size * cfg.optim.grad_accum * n
        assert global_batch == (32 if stage < 3 else procs), (command, json.dumps(sets))
        assert cfg.optim.batch_size <= 4
    assert "optim.optimizer=adamw8bit" in " ".join(launches["train"])


@pytest.mark.parametrize("procs", [3, 64])
def test_multigpu_recipe_refuses_a_batch_it_cannot_split(tmp_path, procs):
    p, calls = _recipe_calls(tmp_path, procs)
    assert p.returncode == 2 and calls == []
    assert len(p.stderr.strip().splitlines()) == 1 and "32" in p.stderr
