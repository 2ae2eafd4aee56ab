"""`--json` on every command: one JSON line on stdout with what was written, what failed and the exit status."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from motion_helpers import speech_like, tiny_motion_model, write_wav
from rgbdface.cli.app import app
from rgbdface.cli.common import COMMON_KEYS, ReportingCommand
from rgbdface.data.io import save_depth16
from train_helpers import make_dataset

runner = CliRunner()
# Training runs: no sample grids or intermediate checkpoints, no progress bar.
TRAIN_QUIET = ["--set", "log.sample_every=0", "--set", "log.checkpoint_every=0", "-q"]


def run_json(*args, input: str | None = None) -> tuple[int, dict]:
    """Run a command with --json; stdout must be exactly one JSON object on one line."""
    args = [str(a) for a in args]
    r = runner.invoke(app, [*args, "--json"], input=input)
    lines = r.stdout.splitlines()
    assert len(lines) == 1, f"stdout: {r.stdout!r}\nstderr: {r.stderr}"
    obj = json.loads(lines[0])
    assert set(COMMON_KEYS) <= obj.keys()
    assert obj["command"] == args[0]
    assert obj["exit_code"] == r.exit_code, r.stderr
    assert isinstance(obj["seconds"], float) and obj["seconds"] >= 0
    assert all(set(f) == {"input", "error"} and "\n" not in f["error"] for f in obj["failed"])
    if obj["error"] is not None:
        assert "\n" not in obj["error"] and obj["error"] in r.stderr  # the same one line as on stderr
    return r.exit_code, obj


def assert_written(obj: dict) -> None:
    assert obj["written"], obj
    for p in obj["written"]:
        assert Path(p).exists(), p


def test_every_command_has_json_and_quiet():
    group = typer.main.get_command(app)
    assert set(group.commands) == {
        "prep-depth", "train-vae", "init-model", "train", "finetune-mask", "train-motion",
        "generate", "estimate-depth", "depth2img", "relight", "talk", "eval", "score"}
    for name, cmd in group.commands.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--json", "--quiet"} <= opts, name
        assert isinstance(cmd, ReportingCommand), name


# ----------------------------------------------------------------------------- data and models
def test_prep_depth_batch_with_a_bad_file(portrait_path, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(portrait_path, inputs / "astronaut.jpg")
    (inputs / "broken.jpg").write_text("not an image")
    out = tmp_path / "ds"
    code, obj = run_json("prep-depth", inputs, "-o", out, "--size", "64", "-q")
    assert code == 1 and obj["error"] is None
    assert [Path(f["input"]).name for f in obj["failed"]] == ["broken.jpg"]
    assert obj["written"] == [str(out)] and (out / "manifest.jsonl").is_file()
    assert obj["done"] == 1 and obj["skipped"] == [] and obj["shard"] == "0/1"
    # Again: the finished input is skipped by name, the bad one fails again.
    code, obj = run_json("prep-depth", inputs, "-o", out, "--size", "64", "-q")
    assert code == 1 and obj["done"] == 0
    assert [Path(p).name for p in obj["skipped"]] == ["astronaut.jpg"]


def test_train_vae_and_init_model(portrait_dataset, tmp_path):
    vae = tmp_path / "vae"
    code, obj = run_json("train-vae", portrait_dataset, "-o", vae, "--image-size", "32", "--steps", "2", "--batch-size", "2", "-q")
    assert code == 0 and obj["written"] == [str(vae)] and (vae / "config.json").is_file()
    assert obj["steps"] == 2 and math.isfinite(obj["final_loss"])
    model = tmp_path / "m"
    code, obj = run_json("init-model", "--tiny", "--vae", vae, "--image-size", "32", "-o", model, "-q")
    assert code == 0 and obj["written"] == [str(model)] and (model / "rgbdface.json").is_file()
    assert obj["stages"] == [0] and obj["image_size"] == 32
    # The whole command fails: valid JSON with the error, exit 1, nothing written.
    code, obj = run_json("init-model", "--tiny", "-o", model)
    assert code == 1 and "--overwrite" in obj["error"] and obj["written"] == []
    # Options that conflict (found by the command) and a bad value (found by the parser): usage errors.
    code, obj = run_json("init-model", "--tiny", "--base", tmp_path, "-o", tmp_path / "x")
    assert code == 2 and "exactly one" in obj["error"]
    code, obj = run_json("train-vae", portrait_dataset, "-o", tmp_path / "v2", "--batch-size", "1")
    assert code == 2 and "--batch-size" in obj["error"] and not (tmp_path / "v2").exists()


# ----------------------------------------------------------------------------- inference
def test_generate(tiny_model_dir, portrait_path, tmp_path):
    out = tmp_path / "g"
    code, obj = run_json("generate", portrait_path, "-o", out, "-n", "1", "--steps", "1", "-m", tiny_model_dir, "-q")
    assert code == 0 and obj["samples"] == 1
    assert_written(obj)
    assert sorted(Path(p).name for p in obj["written"]) == sorted(p.name for p in out.iterdir())
    code, obj = run_json("generate", portrait_path, "-o", tmp_path / "g2", "-m", tmp_path)  # not a model folder
    assert code == 1 and "not an rgbdface model folder" in obj["error"]
    assert obj["written"] == [] and not (tmp_path / "g2").exists()


def test_estimate_depth_relight_and_depth2img(tiny_masked_model_dir, portrait_path, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(portrait_path, inputs / "astronaut.jpg")
    (inputs / "broken.jpg").write_text("not an image")
    out = tmp_path / "depth"
    model = ["-m", tiny_masked_model_dir, "--steps", "1", "-q"]
    code, obj = run_json("estimate-depth", inputs, "-o", out, "--preview", *model)
    assert code == 1 and obj["error"] is None  # some inputs failed; the command did not
    assert [Path(f["input"]).name for f in obj["failed"]] == ["broken.jpg"]
    assert sorted(obj["written"]) == [str(out / "astronaut.png"), str(out / "astronaut_preview.png")]
    assert_written(obj)
    assert obj["images"] == 1 and obj["estimate_seconds"] > 0
    code, obj = run_json("estimate-depth", inputs, "-o", out, "--preview", *model)
    assert code == 1 and obj["skipped"] == [str(inputs / "astronaut.jpg")] and obj["written"] == []
    # The model cannot be loaded: the whole command fails, which is not a failed input.
    code, obj = run_json("estimate-depth", inputs / "astronaut.jpg", "-o", tmp_path / "d.png", "-m", tmp_path, "-q")
    assert code == 1 and "not an rgbdface model folder" in obj["error"] and obj["failed"] == []
    # A usage error found by the parser still gives the report.
    code, obj = run_json("estimate-depth", inputs, "-o", out, "--steps", "0")
    assert code == 2 and "--steps" in obj["error"]

    depth = out / "astronaut.png"
    relit, normals = tmp_path / "relit.png", tmp_path / "normals.png"
    code, obj = run_json("relight", portrait_path, "--depth", depth, "--light", "1,0,1", "-o", relit, "--normals", normals, "-q")
    assert code == 0 and obj["written"] == [str(relit), str(normals)] and obj["depth"] == "given"
    assert_written(obj)
    assert obj["lights"] == 1 and obj["relit_pixels"] > 0
    code, obj = run_json("relight", portrait_path, "-o", tmp_path / "r2.png")
    assert code == 2 and "--light" in obj["error"]

    made = tmp_path / "d2i.png"
    code, obj = run_json("depth2img", depth, "--reference", portrait_path, "-o", made, "--steps", "1",
                         "-m", tiny_masked_model_dir, "-q")
    assert code == 0 and obj["written"] == [str(made)] and obj["mode"] == "full"
    assert_written(obj)


def test_eval_report_holds_the_metrics(tmp_path):
    pred, gt, maps = tmp_path / "pred", tmp_path / "gt", tmp_path / "maps"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        g = rng.integers(4800, 5600, (16, 12)).astype(np.uint16)
        save_depth16(gt / f"{name}.png", g)
        save_depth16(pred / f"{name}.png", (g // 2 + 100).astype(np.uint16))
    save_depth16(gt / "odd.png", rng.integers(4800, 5600, (16, 12)).astype(np.uint16))
    save_depth16(pred / "odd.png", rng.integers(4800, 5600, (8, 8)).astype(np.uint16))  # another size
    code, obj = run_json("eval", "--pred", pred, "--gt", gt, "--error-maps", maps, "-q")
    assert code == 1 and obj["error"] is None
    assert [f["input"] for f in obj["failed"]] == ["odd"]
    assert sorted(obj["written"]) == [str(maps / "a.png"), str(maps / "b.png")]
    assert_written(obj)
    # `metrics` is what --format json prints; --json --format json is the same as --json.
    plain = runner.invoke(app, ["eval", "--pred", str(pred), "--gt", str(gt), "--format", "json", "-q"])
    assert obj["metrics"] == json.loads(plain.stdout)
    assert obj["metrics"]["n_images"] == 2 and obj["metrics"]["abs_rel"] < 1e-3
    code, same = run_json("eval", "--pred", pred, "--gt", gt, "--format", "json", "-q")
    assert code == 1 and same["metrics"] == obj["metrics"]
    code, obj = run_json("eval", "--pred", pred, "--gt", gt, "--format", "csv")
    assert code == 2 and "--format csv" in obj["error"]


def test_talk(portrait_path, tmp_path):
    model = tmp_path / "tiny3"
    tiny_motion_model().save_pretrained(model)
    speech = write_wav(tmp_path / "speech.wav", speech_like(0.3))
    out, frames = tmp_path / "out.mp4", tmp_path / "frames"
    code, obj = run_json("talk", portrait_path, speech, "-o", out, "--depth-frames", frames, "-m", model, "--steps", "1", "-q")
    assert code == 0 and obj["written"] == [str(out), str(frames)]
    assert_written(obj)
    assert obj["frames"] == math.ceil(0.3 * 25) == len(list(frames.iterdir()))
    assert obj["audio_seconds"] == pytest.approx(0.3, abs=0.03) and obj["clips"] == 1


# ----------------------------------------------------------------------------- training
def test_train_finetune_mask_and_train_motion(tiny_model_dir, tmp_path):
    data = make_dataset(tmp_path / "data", identities=2, frames=2)
    run1 = tmp_path / "run1"
    code, obj = run_json("train", data, "-o", run1, "-m", tiny_model_dir, "--max-steps", "1",
                         "--set", "optim.batch_size=2", *TRAIN_QUIET)
    assert code == 0 and obj["written"] == [str(run1)] and obj["model"] == str(run1 / "model")
    assert obj["steps"] == 1 and math.isfinite(obj["final_loss"]) and obj["samples_seen"] == 2
    assert Path(obj["checkpoint"]).is_dir() and (run1 / "model" / "rgbdface.json").is_file()

    run2 = tmp_path / "run2"
    code, obj = run_json("finetune-mask", data, "-o", run2, "-m", run1, "--max-steps", "1",
                         "--set", "optim.batch_size=2", *TRAIN_QUIET)
    assert code == 0 and obj["steps"] == 1 and math.isfinite(obj["final_loss"])
    assert json.loads((Path(obj["model"]) / "rgbdface.json").read_text())["stages"] == [0, 1, 2]

    audio = make_dataset(tmp_path / "audio", identities=1, frames=6, audio=True)
    code, obj = run_json("train-motion", audio, "-o", tmp_path / "run3", "-m", run1, "--max-steps", "1",
                         "--set", "motion.frames=4", "--set", "motion.motion_frames=2", *TRAIN_QUIET)
    assert code == 0 and obj["steps"] == 1 and Path(obj["model"]).is_dir()

    # Failures of the whole command, and a combination that cannot work.
    code, obj = run_json("train", data, "-o", tmp_path / "bad", "-m", tmp_path / "nowhere")
    assert code == 1 and "no such folder" in obj["error"] and obj["written"] == []
    code, obj = run_json("finetune-mask", data, "-o", tmp_path / "bad", "-m", tiny_model_dir)
    assert code == 1 and "stage-1" in obj["error"]
    code, obj = run_json("train", data, "-o", tmp_path / "bad", "--tiny", "--show-config")
    assert code == 2 and "--show-config" in obj["error"]
    assert not (tmp_path / "bad").exists()
