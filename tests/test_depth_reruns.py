"""estimate-depth re-runs and batches: a named output made with other options is redone, skipped outputs made
otherwise are named; maps from different --batch-size agree within the documented bound."""

import json
import shutil

import imageio.v3 as iio
import numpy as np
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.pipelines.depth_files import RECORD_KEY, read_record

runner = CliRunner()


def run(args, model_dir):
    return runner.invoke(app, ["estimate-depth", *map(str, args), "--model", str(model_dir), "--steps", "1"])


def test_a_named_output_made_with_other_options_is_redone(tiny_masked_model_dir, portrait_path, tmp_path):
    out = tmp_path / "x.png"
    assert run([portrait_path, "-o", out], tiny_masked_model_dir).exit_code == 0
    record = read_record(out)
    assert record["ensemble"] == 1 and record["steps"] == 1 and record["seed"] == 0
    first = out.read_bytes()
    # the same options: nothing to redo
    r = run([portrait_path, "-o", out], tiny_masked_model_dir)
    assert r.exit_code == 0 and "skipping 1 input(s)" in r.stderr and out.read_bytes() == first
    # other options: redone, and the log says why
    r = run([portrait_path, "-o", out, "--ensemble", "2", "--json"], tiny_masked_model_dir)
    assert r.exit_code == 0, r.output
    assert "--ensemble 1 (now 2)" in r.stderr and "redoing" in r.stderr
    assert json.loads(r.stdout)["written"] == [str(out)]
    assert read_record(out)["ensemble"] == 2 and out.read_bytes() != first
    # a mesh made with another relief is redone with its depth
    assert run([portrait_path, "-o", out, "--ensemble", "2", "--mesh", tmp_path / "x.ply"], tiny_masked_model_dir).exit_code == 0
    r = run([portrait_path, "-o", out, "--ensemble", "2", "--mesh", tmp_path / "x.ply", "--relief", "0.3"], tiny_masked_model_dir)
    assert r.exit_code == 0 and "--relief 0.5 (now 0.3)" in r.stderr and read_record(out)["relief"] == 0.3


def test_skipped_folder_outputs_made_otherwise_are_named(tiny_masked_model_dir, portrait_path, tmp_path):
    shutil.copy(portrait_path, tmp_path / "a.jpg")
    out = tmp_path / "out"
    assert run([tmp_path, "-o", out], tiny_masked_model_dir).exit_code == 0  # a folder: -o is a folder
    stamp = (out / "a.png").stat().st_mtime_ns
    r = run([tmp_path / "a.jpg", "-o", out, "--seed", "3"], tiny_masked_model_dir)
    # a folder run keeps what exists (an interrupted batch resumes) but says which option differs and how to redo
    assert r.exit_code == 0 and (out / "a.png").stat().st_mtime_ns == stamp
    assert "--seed 0 (now 3)" in r.stderr and "--overwrite" in r.stderr
    r = run([tmp_path / "a.jpg", "-o", out, "--seed", "3", "--overwrite"], tiny_masked_model_dir)
    assert r.exit_code == 0 and read_record(out / "a.png")["seed"] == 3


def test_the_record_is_a_standard_png_text_chunk(tiny_masked_model_dir, portrait_path, tmp_path):
    from PIL import Image

    out = tmp_path / "x.png"
    assert run([portrait_path, "-o", out], tiny_masked_model_dir).exit_code == 0
    with Image.open(out) as im:
        assert json.loads(im.text[RECORD_KEY])["scheduler"] == "ddim"
        assert im.mode.startswith("I")  # still a 16-bit grayscale PNG
    assert iio.imread(out).dtype == np.uint16


def test_batch_size_changes_a_map_by_at_most_one_unit(tiny_masked_model_dir, portraits, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in portraits[:3]:
        shutil.copy(p, folder / p.name)
    for b in ("1", "3"):
        r = run([folder, "-o", tmp_path / f"b{b}", "-b", b, "--npy", "-q"], tiny_masked_model_dir)
        assert r.exit_code == 0, r.output
    for p in portraits[:3]:
        a, b = (iio.imread(tmp_path / f"b{k}" / f"{p.stem}.png").astype(int) for k in ("1", "3"))
        assert np.array_equal(a > 0, b > 0)  # the same face region
        assert np.abs(a - b).max() <= 1  # the documented bound: float rounding of batched kernels, not the batch's content
        fa, fb = (np.load(tmp_path / f"b{k}" / f"{p.stem}.npy") for k in ("1", "3"))
        assert np.abs(fa - fb).max() < 1.0


def test_the_batch_runner_works_from_python(tiny_masked_model, portraits, tmp_path):
    from rgbdface.pipelines.depth_files import (DepthBatchRunner, DepthFileOptions, depth_record, estimate_depth_files, plan_depth_jobs,
                                                select_jobs)

    jobs = plan_depth_jobs(portraits[:2], tmp_path / "out", DepthFileOptions(preview=True))
    record = dict(steps=1, seed=0)
    chosen = select_jobs(jobs, record)
    assert chosen.todo == jobs and not chosen.skipped
    runner = DepthBatchRunner(lambda: tiny_masked_model, tiny_masked_model.meta.crop_margin, dict(steps=1))
    outcomes = [o for batch in estimate_depth_files(chosen.todo, runner, batch_size=2, record=record) for o in batch]
    assert [o.error for o in outcomes] == [None, None]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{p.stem}{end}" for p in portraits[:2] for end in (".png", "_preview.png"))
    again = select_jobs(jobs, record)
    assert again.skipped == jobs and not again.stale
    assert select_jobs(jobs, dict(steps=1, seed=5)).stale[jobs[0].source] == ["--seed 0 (now 5)"]
    assert depth_record(None)["steps"] >= 1  # the bundled model's own steps, read from its rgbdface.json
