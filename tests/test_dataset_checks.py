"""Hostile and broken datasets: every manifest path stays inside the dataset, every file a run reads
is checked before step 0, and bad JSON is one line naming the file; nothing is written first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.manifest import load_manifest
from rgbdface.utils import InputError
from train_helpers import make_dataset

runner = CliRunner()
ONE_STEP = ["--max-steps", "1", "--set", "log.sample_every=0", "-q"]


def rows_of(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]


def write_rows(root: Path, rows: list[dict]) -> None:
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def data(tmp_path) -> Path:
    """Two identities, two wild frames and one studio view each (32 px); a secret file beside it."""
    (tmp_path / "secret.png").write_bytes(b"not a portrait")
    return make_dataset(tmp_path / "data", identities=2, frames=2, studio_per_identity=1)


def one_line_error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rgbdface: error:"), r.stderr
    return lines[0]


ESCAPES = {
    "dotdot": lambda root: "../secret.png",
    "deep_dotdot": lambda root: "../../../../../../../../etc/passwd",
    "absolute": lambda root: str(root.parent / "secret.png"),
    "inner_dotdot": lambda root: "person0/../../secret.png",
}


@pytest.mark.parametrize("how", sorted(ESCAPES))
@pytest.mark.parametrize("field", ["rgb", "depth", "mask", "landmarks", "audio", "audio_features"])
def test_manifest_paths_must_stay_inside_the_dataset(data, how, field):
    rows = rows_of(data)
    rows[2][field] = ESCAPES[how](data)
    write_rows(data, rows)
    with pytest.raises(InputError) as e:
        load_manifest(data)
    msg = str(e.value)
    assert "manifest.jsonl:3" in msg and repr(rows[2]["id"]) in msg and field in msg and "outside the dataset" in msg
    assert "\n" not in msg


def test_a_link_out_of_the_dataset_is_refused(data):
    rows = rows_of(data)
    os.symlink(data.parent / "secret.png", data / "person0" / "link.png")
    rows[0]["rgb"] = "person0/link.png"
    write_rows(data, rows)
    with pytest.raises(InputError, match="rgb 'person0/link.png' is outside the dataset"):
        load_manifest(data)
    # A linked folder that leads out is refused too; links that stay inside are fine
    os.symlink(data.parent, data / "up")
    rows[0]["rgb"] = "up/secret.png"
    write_rows(data, rows)
    with pytest.raises(InputError, match="outside the dataset"):
        load_manifest(data)
    os.symlink(data / "person0" / "rgb_000000.png", data / "person0" / "inside.png")
    rows[0]["rgb"] = "person0/inside.png"
    write_rows(data, rows)
    assert load_manifest(data)[0].rgb == data / "person0" / "inside.png"


@pytest.mark.parametrize("command", ["train", "finetune-mask", "train-motion", "eval"])
def test_commands_refuse_an_escaping_row_before_any_work(data, command, tiny_masked_model_dir, tmp_path):
    rows = rows_of(data)
    rows[1]["rgb"] = "../../../../../../../../etc/passwd"
    write_rows(data, rows)
    run = tmp_path / "run"
    args = {"train": ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", *ONE_STEP],
            "finetune-mask": ["finetune-mask", str(data), "-o", str(run), "-m", str(tiny_masked_model_dir), *ONE_STEP],
            "train-motion": ["train-motion", str(data), "-o", str(run), "-m", str(tiny_masked_model_dir), *ONE_STEP],
            "eval": ["eval", "--data", str(data), "--method", "plane", "--source", "all"]}[command]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    line = one_line_error(r)
    assert "manifest.jsonl:2" in line and "rgb '../../../../../../../../etc/passwd' is outside the dataset" in line
    assert r.stdout == "" and not run.exists()


@pytest.mark.parametrize("field", ["rgb", "depth"])
def test_missing_files_are_found_before_step_0(data, field, tmp_path):
    (data / "person1" / f"{field}_000001.png").unlink()
    (data / "person0-studio" / f"{field}_000000.png").write_bytes(b"")  # empty counts as missing
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", *ONE_STEP])
    assert r.exit_code == 1, r.output
    line = one_line_error(r)
    assert "2 files named by the manifest are missing or empty" in line
    assert f"person1/{field}_000001.png ({field} of person1/1)" in line
    assert f"person0-studio/{field}_000000.png" in line
    assert not run.exists()


def test_missing_audio_is_found_before_step_0(tmp_path, tiny_masked_model_dir):
    data = make_dataset(tmp_path / "clips", identities=1, frames=7, audio=True)
    (data / "person0_audio.wav").unlink()
    run = tmp_path / "run"
    r = runner.invoke(app, ["train-motion", str(data), "-o", str(run), "-m", str(tiny_masked_model_dir),
                            "--set", "motion.frames=4", "--set", "motion.motion_frames=2", *ONE_STEP])
    assert r.exit_code == 1, r.output
    assert "1 file named by the manifest is missing or empty: person0_audio.wav (audio of person0/0)" in one_line_error(r)
    assert not run.exists()


@pytest.mark.parametrize("case", ["info_not_json", "info_not_object", "row_not_json", "row_not_object",
                                  "row_without_identity", "frame_not_int", "no_manifest"])
def test_dataset_json_errors_name_the_file(data, case, tmp_path):
    rows = rows_of(data)
    expect = {"info_not_json": "dataset.json: not valid JSON", "info_not_object": "dataset.json: expected a JSON object",
              "row_not_json": "manifest.jsonl:4: not valid JSON", "row_not_object": "manifest.jsonl:4: a row must be a JSON object",
              "row_without_identity": "manifest.jsonl:4 (row 'person1/0'): no identity",
              "frame_not_int": "manifest.jsonl:4 (row 'person1/0'): frame must be a int, got '0'",
              "no_manifest": "has no manifest.jsonl"}[case]
    if case == "info_not_json":
        (data / "dataset.json").write_text('{"format": "rgbdface-dataset",')
    elif case == "info_not_object":
        (data / "dataset.json").write_text("[]")
    elif case == "no_manifest":
        (data / "manifest.jsonl").unlink()
    else:
        lines = [json.dumps(r) for r in rows]
        lines[3] = {"row_not_json": '{"id": "person0-studio/0", ', "row_not_object": "[1, 2]",
                    "row_without_identity": json.dumps({k: v for k, v in rows[3].items() if k != "identity"}),
                    "frame_not_int": json.dumps({**rows[3], "frame": "0"})}[case]
        (data / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "--tiny", "--image-size", "32", *ONE_STEP])
    assert r.exit_code == 1, r.output
    assert expect in one_line_error(r)
    assert not run.exists()


def test_train_vae_checks_the_files_it_reads(data, tmp_path):
    (data / "person0" / "depth_000001.png").unlink()
    out = tmp_path / "vae"
    r = runner.invoke(app, ["train-vae", str(data), "-o", str(out), "--image-size", "32", "--steps", "1", "-q"])
    assert r.exit_code == 1, r.output
    assert "1 file named by the manifest is missing or empty: person0/depth_000001.png (depth of person0/1)" in one_line_error(r)
    assert not out.exists()
