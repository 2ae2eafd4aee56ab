"""Training runs that go wrong: bad numbers in the config, a loss that diverges, corrupt checkpoints,
torn logs, leftovers of killed runs, two trainers on one folder, launcher variables without a launcher."""

from __future__ import annotations

import json
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
