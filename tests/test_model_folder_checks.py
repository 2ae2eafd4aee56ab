"""Broken model folders: every file and JSON record is checked before any weights load, and what is
missing or wrong is one line naming the file (never a raw library error, never a network message)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.models.model import load_model
from rgbdface.utils import InputError

runner = CliRunner()
WEIGHTS = "diffusion_pytorch_model.safetensors"


def edit_json(path: Path, change) -> None:
    d = json.loads(path.read_text())
    path.write_text(json.dumps(change(d)))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 100])


def to_pickles(folder: Path) -> None:
    (folder / WEIGHTS).rename(folder / "diffusion_pytorch_model.bin")


BREAKS = {
    "missing_weights": (lambda m: (m / "unet" / WEIGHTS).unlink(), f"unet/{WEIGHTS}: missing"),
    "truncated_weights": (lambda m: truncate(m / "reference_unet" / WEIGHTS), f"reference_unet/{WEIGHTS}: truncated"),
    "truncated_context": (lambda m: truncate(m / "context.safetensors"), "context.safetensors: truncated"),
    "pickles": (lambda m: to_pickles(m / "vae"), "vae: holds pickled weights (diffusion_pytorch_model.bin), which rgbdface never loads"),
    "meta_is_a_list": (lambda m: (m / "rgbdface.json").write_text("[0, 1]"), "rgbdface.json: expected a JSON object, got a list"),
    "meta_not_json": (lambda m: (m / "rgbdface.json").write_text('{"stages": [0,'), "rgbdface.json: not valid JSON"),
    "unknown_depth_key": (lambda m: edit_json(m / "rgbdface.json", lambda d: {**d, "depth": {"scale": 2}}),
                          "rgbdface.json: depth must be an object with keys among"),
    "talk_guidance_below_one": (lambda m: edit_json(m / "rgbdface.json", lambda d: {**d, "talk_guidance": 0.5}),
                                "rgbdface.json: talk_guidance must be null or a number >= 1"),
    "stages_not_numbers": (lambda m: edit_json(m / "rgbdface.json", lambda d: {**d, "stages": "0,1"}),
                           "rgbdface.json: stages must be a list of stage numbers 0-3, got '0,1'"),
    "stage2_without_masked_unet": (lambda m: edit_json(m / "rgbdface.json", lambda d: {**d, "stages": [0, 1, 2]}),
                                   "masked_unet/config.json: missing"),
    "stage3_without_motion": (lambda m: edit_json(m / "rgbdface.json", lambda d: {**d, "stages": [0, 1, 3]}),
                              "motion/motion.json: missing"),
    "unet_config_a_list": (lambda m: (m / "unet" / "config.json").write_text("[]"), "unet/config.json: expected a JSON object"),
    "no_scheduler": (lambda m: shutil.rmtree(m / "scheduler"), "scheduler/scheduler_config.json: missing"),
    "weights_of_another_shape": (
        lambda m: edit_json(m / "unet" / "config.json", lambda d: {**d, "block_out_channels": [c * 2 for c in d["block_out_channels"]]}),
        "cannot be loaded"),
}


@pytest.fixture
def broken(tiny_model_dir, tmp_path):
    def make(case: str) -> tuple[Path, str]:
        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dir, folder)
        BREAKS[case][0](folder)
        return folder, BREAKS[case][1]

    return make


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_a_broken_model_folder_is_one_line_naming_what_is_wrong(broken, case):
    folder, expect = broken(case)
    with pytest.raises(InputError) as e:
        load_model(folder)
    msg = str(e.value)
    assert expect in msg and str(folder) in msg and "\n" not in msg
    assert "http" not in msg and "huggingface" not in msg.lower()


@pytest.mark.parametrize("case", ["pickles", "meta_is_a_list", "weights_of_another_shape"])
def test_commands_say_so_before_any_work(broken, case, portrait_path, tmp_path):
    folder, expect = broken(case)
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(out), "--steps", "1", "--model", str(folder)])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rgbdface: error:") and expect in lines[0], r.stderr
    assert not out.exists()


def test_training_checks_the_starting_model(broken, tmp_path):
    from train_helpers import make_dataset

    folder, expect = broken("missing_weights")
    data = make_dataset(tmp_path / "data", identities=2, frames=2)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "-m", str(folder), "--max-steps", "1", "-q"])
    assert r.exit_code == 1, r.output
    assert expect in r.stderr and not run.exists()


def test_whole_folders_pass(tiny_model_dir, tiny_masked_model_dir):
    from rgbdface.models.folder import BUNDLED_MODEL, check_model_folder

    for folder in (tiny_model_dir, tiny_masked_model_dir, BUNDLED_MODEL):
        assert check_model_folder(folder)["stages"][0] == 0


def test_device_trouble_is_not_blamed_on_the_folder(tiny_model_dir, monkeypatch):
    import rgbdface.models.model as model_module

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model_module, "_own_storage", oom)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        load_model(tiny_model_dir)
