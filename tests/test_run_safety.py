"""Training runs that go wrong: bad numbers in the config, a loss that diverges, corrupt checkpoints,
torn logs, leftovers of killed runs, two trainers on one folder, launcher variables without a launcher."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from train_helpers import make_dataset

runner = CliRunner()
FAST = ["--set", "log.sample_every=0", "--set", "log.log_every=1", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("safety") / "data", identities=2, frames=2)


def one_line_error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rgbdface: error:"), r.stderr
    return lines[0]


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- config values
@pytest.mark.parametrize("item, expect", [
    ("optim.lr=inf", "config optim.lr=inf: every number must be finite"),
    ("optim.lr=nan", "config optim.lr=nan: every number must be finite"),
    ("optim.lr=-1e-4", "optim.lr must be > 0"),
    ("optim.max_steps=0", "optim.max_steps must be >= 1"),
    ("optim.betas=0.9,1.5", "optim.betas must be in [0, 1)"),
    ("optim.eps=0", "optim.eps must be > 0"),
    ("loss.depth_weight=inf", "config loss.depth_weight=inf: every number must be finite"),
    ("data.hflip=nan", "data.hflip=nan"),
    ("seed=-1", "seed must be in [0, 2**63)"),
    ("optim.batch_size=two", "--set optim.batch_size=two: config optim.batch_size: 'two' is not a valid int"),
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.lr", "expected key=value"),
])
def test_bad_set_values_are_usage_errors(data, item, expect, tmp_path):
    run = tmp_path / "run"
    steps = [] if item.startswith("optim.max_steps") else ["--max-steps", "1"]  # (a wrong pass trains one step only)
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--set", item, *steps, *FAST])
    assert r.exit_code == 2, r.output
    assert expect in one_line_error(r)
    assert r.stdout == "" and not run.exists()


def test_a_bad_recipe_file_is_bad_input(data, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"defaults": {"optim": {"lr": float("inf")}}}))
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--config", str(recipe), *FAST])
    assert r.exit_code == 1, r.output
    assert "config optim.lr=inf: every number must be finite" in one_line_error(r)
    assert not run.exists()


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(data, tmp_path):
    """lr = 1e30 is finite but blows the weights up after the first step: the loss of step 2 is NaN."""
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "3",
                            "--set", "optim.lr=1e30", "--set", "optim.warmup_steps=0", "--set", "log.checkpoint_every=1", *FAST])
    assert r.exit_code == 1, r.output
    line = one_line_error(r)
    assert "step 2: the loss is nan, not finite; training stopped" in line
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step-00000001'}" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
    assert not (run / "model").exists()
    rows = log_rows(run)
    assert rows[0]["step"] == 1 and rows[-1] == {"event": "diverged", "step": 2, "why": "the loss is nan"}


# ----------------------------------------------------------------------------- resume, overwrite, leftovers, locks
@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished 3-step run with a checkpoint at every step (all kept)."""
    run = tmp_path_factory.mktemp("safety") / "finished"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "3",
                            "--set", "log.checkpoint_every=1", "--set", "log.keep_checkpoints=0", *FAST])
    assert r.exit_code == 0, r.output
    return run


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def step_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_state", "no_optimizer"])
def test_resume_falls_back_to_the_newest_whole_checkpoint(finished, damage, tmp_path, data, caplog):
    run = copy_run(finished, tmp_path / "run")
    newest = run / "checkpoints" / "step-00000003"
    if damage == "truncated_weights":
        f = newest / "model" / "unet" / "diffusion_pytorch_model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "garbage_state":
        (newest / "state.json").write_text('{"step": 3, "micro')
    else:
        (newest / "optimizer.safetensors").unlink()
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line torn by a kill
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32",
                            "--resume", "--max-steps", "4", "--set", "log.sample_every=0", "--set", "log.log_every=1"])
    assert r.exit_code == 0, r.output
    assert f"{run}/checkpoints/step-00000003 is damaged" in caplog.text
    assert f"resuming from {run}/checkpoints/step-00000002 instead" in caplog.text
    assert "damaged-step-00000003" in step_names(run) and "step-00000004" in step_names(run)
    rows = log_rows(run)  # the torn line is gone; steps 3 and 4 are written again
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]


def test_resume_with_no_whole_checkpoint_says_so(finished, tmp_path, data):
    run = copy_run(finished, tmp_path / "run")
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "config.json").write_text("{")
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--resume", *FAST])
    assert r.exit_code == 1, r.output
    assert "step-00000003: damaged (config.json is not valid JSON) and no older checkpoint is whole; pass --overwrite" in one_line_error(r)


def test_overwrite_trains_a_finished_run_again(finished, tmp_path, data):
    run = copy_run(finished, tmp_path / "run")
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "2", *FAST])
    assert r.exit_code == 1 and "--overwrite to train again from the start" in one_line_error(r)
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "2", "--overwrite",
                            "--set", "log.checkpoint_every=0", *FAST])
    assert r.exit_code == 0, r.output
    assert step_names(run) == ["step-00000002"]  # the earlier run's checkpoints are gone
    assert [row.get("step") for row in log_rows(run)] == [1, 2, 2]  # its log too: two steps and "done"
    assert json.loads((run / "model" / "rgbdface.json").read_text())["extra"]["stage1"]["steps"] == 2
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--resume", "--overwrite", *FAST])
    assert r.exit_code == 2 and "pass one" in one_line_error(r)


def test_leftovers_of_killed_runs_are_swept(finished, tmp_path, data, caplog):
    caplog.set_level(logging.INFO, logger="rgbdface.training")
    run = copy_run(finished, tmp_path / "run")
    ckpts = run / "checkpoints"
    # kill -9 during the final model save, during a checkpoint write, during pruning, during a log-file write
    (run / ".model.x1y2.tmp" / "unet").mkdir(parents=True)
    (run / ".model.x1y2.tmp" / "unet" / "w.safetensors").write_bytes(b"x" * 100)
    (ckpts / ".step-00000004.tmp" / "model").mkdir(parents=True)
    (ckpts / ".step-00000001.trash").mkdir()
    (ckpts / "step-00000001" / "state.json").unlink()  # pruning got this far
    (run / ".config.abc.tmp.json").write_text("{")
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--resume", "--max-steps", "4",
                            "--set", "log.keep_checkpoints=2", "--set", "log.sample_every=0"])
    assert r.exit_code == 0, r.output
    assert "removed 5 leftovers of an interrupted run" in caplog.text
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "config.json", "log.jsonl", "model"]
    assert step_names(run) == ["step-00000003", "step-00000004"]  # pruned to 2, nothing else left


def test_a_kill_between_the_renames_of_a_model_save_restores_the_model(finished, tmp_path, data):
    run = copy_run(finished, tmp_path / "run")
    (run / "model").rename(run / ".model.old")
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "1", *FAST])
    assert r.exit_code == 1 and "holds checkpoints" in one_line_error(r)
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--resume", "--max-steps", "3", *FAST])
    assert r.exit_code == 0, r.output
    assert (run / "model" / "rgbdface.json").is_file() and not (run / ".model.old").exists()


def test_a_second_trainer_on_the_same_run_folder_stops(data, tmp_path):
    from rgbdface.training.state import lock_run

    run = tmp_path / "run"
    run.mkdir()
    held = lock_run(run)  # as a running trainer holds it (flock: per open file, so this process counts as another)
    try:
        r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "1", *FAST])
        assert r.exit_code == 1, r.output
        assert f"another training process (pid {os.getpid()}) is using this run folder" in one_line_error(r)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        held.close()
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "1", *FAST])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("env, expect", [
    ({"RANK": "5", "WORLD_SIZE": "3"}, "RANK=5 WORLD_SIZE=3 (from the environment): need 0 <= RANK < WORLD_SIZE"),
    ({"RANK": "1", "WORLD_SIZE": "2"}, "RANK=1 WORLD_SIZE=2 are set, but no launcher started this process"),
    ({"RANK": "0"}, "RANK=0 WORLD_SIZE=None (from the environment): a launcher sets both"),
])
def test_launcher_variables_without_a_launcher(data, env, expect, tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "1", *FAST])
    assert r.exit_code == 2, r.output
    assert expect in one_line_error(r)
    assert not run.exists()


def test_shard_from_the_environment_is_not_blamed_on_shard(monkeypatch):
    from rgbdface.cli.common import parse_shard
    from rgbdface.utils import UsageError

    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UsageError) as e:
        parse_shard(None)
    assert "--shard" not in str(e.value) and "RANK=5 WORLD_SIZE=3 (from the environment)" in str(e.value)
    monkeypatch.setenv("RANK", "2")
    assert parse_shard(None) == (2, 3)


def test_an_interrupted_checkpoint_write_leaves_nothing(data, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM (raised as an exception by the command) midway through writing a checkpoint."""
    import rgbdface.training.state as state

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "optimizer_to_files", interrupted)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", "--max-steps", "2",
                            "--set", "log.checkpoint_every=1", *FAST])
    assert isinstance(r.exception, KeyboardInterrupt) or r.exit_code == 130, r.output
    assert list((run / "checkpoints").iterdir()) == []  # no hidden .step-00000001.tmp/ either
