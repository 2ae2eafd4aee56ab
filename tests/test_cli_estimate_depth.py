"""`rgbdface estimate-depth` end to end on real portraits: files, folders, stdin, skip, shards, bad inputs."""

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def many(tmp_path_factory, portraits):
    """Five portraits (copies of the examples under distinct names)."""
    folder = tmp_path_factory.mktemp("many")
    for i in range(5):
        src = portraits[i % len(portraits)]
        shutil.copy(src, folder / f"p{i}{src.suffix}")
    return sorted(folder.iterdir())


def run(args, model_dir, **kw):
    return runner.invoke(app, ["estimate-depth", *map(str, args), "--model", str(model_dir), "--steps", "1", "-q"], **kw)


def test_single_input_writes_each_requested_output(tiny_masked_model_dir, portrait_path, tmp_path):
    import trimesh

    out = tmp_path / "d.png"
    r = run([portrait_path, "-o", out, "--ensemble", "2", "--uncertainty", "--npy", "--preview", "--mesh", tmp_path / "face.ply"],
            tiny_masked_model_dir)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    depth = iio.imread(out)
    assert depth.shape == (512, 512) and depth.dtype == np.uint16
    valid = depth > 0
    assert 0.005 < valid.mean() < 0.5
    units = np.load(tmp_path / "d.npy")
    assert units.dtype == np.float32 and np.array_equal(units > 0, valid) and np.allclose(units[valid], depth[valid], atol=0.5)
    unc = np.load(tmp_path / "d_uncertainty.npy")
    assert unc.shape == depth.shape and np.all(unc[~valid] == 0) and unc.max() > 0
    preview = iio.imread(tmp_path / "d_preview.png")
    assert preview.shape == (512, 512, 3) and not preview[~valid].any()
    mesh = trimesh.load(tmp_path / "face.ply", force="mesh", process=False)
    assert len(mesh.vertices) == valid.sum() and len(mesh.faces) > valid.sum()
    # a .npy output instead of the PNG
    r = run([portrait_path, "-o", tmp_path / "d2.npy", "--ensemble", "2"], tiny_masked_model_dir)
    assert r.exit_code == 0, r.output
    assert np.allclose(np.load(tmp_path / "d2.npy"), units)  # same seed, same depth


def test_stdin_pipeline_folder_output_and_skip_existing(tiny_masked_model_dir, many, tmp_path):
    out = tmp_path / "out"
    listing = "".join(f"{p}\n" for p in many[:3])
    r = run(["-", "-o", out, "--mesh", "glb"], tiny_masked_model_dir, input=listing)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"p{i}.{ext}" for i in range(3) for ext in ("png", "glb"))
    for i, p in enumerate(many[:3]):
        assert iio.imread(out / f"p{i}.png").shape == iio.imread(p).shape[:2]
    # a second run skips what exists and redoes it with --overwrite
    stamp = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    r = runner.invoke(app, ["estimate-depth", "-", "-o", str(out), "--mesh", "glb", "--model", str(tiny_masked_model_dir), "--steps", "1"],
                      input=listing)
    assert r.exit_code == 0 and "skipping 3 input(s)" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    (out / "p1.glb").unlink()  # an input with a missing output is redone
    r = run(["-", "-o", out, "--mesh", "glb"], tiny_masked_model_dir, input=listing)
    assert r.exit_code == 0 and (out / "p1.glb").exists()
    assert (out / "p0.png").stat().st_mtime_ns == stamp[out / "p0.png"] and (out / "p1.png").stat().st_mtime_ns != stamp[out / "p1.png"]
    r = run(["-", "-o", out, "--overwrite"], tiny_masked_model_dir, input=listing)
    assert r.exit_code == 0 and (out / "p0.png").stat().st_mtime_ns != stamp[out / "p0.png"]


def test_shards_cover_every_input_exactly_once(tiny_masked_model_dir, many, tmp_path, monkeypatch):
    folder = many[0].parent
    made = []
    for i in range(3):
        out = tmp_path / f"shard{i}"
        if i == 2:  # the launcher's variables stand in for --shard
            monkeypatch.setenv("RANK", "2")
            monkeypatch.setenv("WORLD_SIZE", "3")
            r = run([folder, "-o", out], tiny_masked_model_dir)
        else:
            r = run([folder, "-o", out, "--shard", f"{i}/3"], tiny_masked_model_dir)
        assert r.exit_code == 0, r.output
        made.append({p.stem for p in out.iterdir()})
    assert sum(len(m) for m in made) == len(many)
    assert set().union(*made) == {p.stem for p in many}
    r = run([folder, "-o", tmp_path / "x", "--shard", "3/3"], tiny_masked_model_dir)
    assert r.exit_code == 2 and "--shard" in r.stderr


def test_bad_inputs_are_reported_and_the_rest_done(tiny_masked_model_dir, many, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(many[0], folder / "good.jpg")
    (folder / "broken.jpg").write_text("not an image")
    iio.imwrite(folder / "blank.png", np.full((96, 96, 3), 200, np.uint8))
    out = tmp_path / "out"
    r = run([folder, tmp_path / "missing.jpg", "-o", out], tiny_masked_model_dir)
    assert r.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    for name in ("broken.jpg", "blank.png", "missing.jpg"):
        assert name in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("rgbdface: error: 3 of 4 inputs failed")


@pytest.mark.parametrize("kind", ["not_image", "no_face", "stage0"])
def test_single_input_errors_are_one_line_and_write_nothing(kind, tiny_masked_model_dir, tiny_model_dir, portrait_path, tmp_path):
    src, model = portrait_path, tiny_masked_model_dir
    if kind == "not_image":
        src = tmp_path / "x.jpg"
        src.write_text("text")
    elif kind == "no_face":
        src = tmp_path / "x.png"
        iio.imwrite(src, np.full((96, 96, 3), 200, np.uint8))
    else:
        model = tiny_model_dir
    out = tmp_path / "o" / "d.png"
    r = runner.invoke(app, ["estimate-depth", str(src), "-o", str(out), "--model", str(model), "--steps", "1", "--mesh", "ply"])
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("rgbdface: error:")]
    assert len(errors) == 1 and (str(src) in errors[0] or "stage 2" in errors[0]), r.stderr
    assert not out.exists() and not out.with_suffix(".ply").exists()


def test_usage_errors(tiny_masked_model_dir, many, tmp_path):
    folder = many[0].parent
    r = run([folder, "-o", tmp_path / "d.png"], tiny_masked_model_dir)
    assert r.exit_code == 2 and "must be a folder" in r.stderr
    r = run([many[0], "-o", tmp_path / "d.png", "--uncertainty"], tiny_masked_model_dir)
    assert r.exit_code == 2 and "--ensemble" in r.stderr
    r = run([folder, "-o", tmp_path / "o", "--mesh", "x.stl"], tiny_masked_model_dir)
    assert r.exit_code == 2
    r = run([many[0], many[0].with_name("p0.png"), "-o", tmp_path / "o"], tiny_masked_model_dir)
    assert r.exit_code == 2 and "both write" in r.stderr and not (tmp_path / "o").exists()


def test_flip_option_matches_the_library(tiny_masked_model_dir, portrait_path, tmp_path):
    from rgbdface.data.io import load_image
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.depth import estimate_depth

    model = load_model(tiny_masked_model_dir)
    image = load_image(portrait_path)
    outs = {}
    for opt in ("--flip", "--no-flip"):
        extra = ["--uncertainty"] if opt == "--flip" else []  # two estimates: a spread without --ensemble
        r = run([portrait_path, "-o", tmp_path / f"{opt[2:]}.png", opt, *extra], tiny_masked_model_dir)
        assert r.exit_code == 0, r.output
        outs[opt] = iio.imread(tmp_path / f"{opt[2:]}.png")
        want = estimate_depth(model, image, steps=1, flip=opt == "--flip").to_u16()
        assert np.abs(outs[opt].astype(int) - want.astype(int)).max() <= 1
    assert np.abs(outs["--flip"].astype(int) - outs["--no-flip"].astype(int)).max() > 100
    spread = np.load(tmp_path / "flip_uncertainty.npy")
    assert spread.shape == outs["--flip"].shape and spread.max() > 0 and np.all(spread[outs["--flip"] == 0] == 0)
