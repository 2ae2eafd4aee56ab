"""Every output path of a run is planned before any work: collisions between outputs, or with an input, are
usage errors (exit 2, nothing written); an output location that cannot work is an error before a model loads."""

import os
import shutil
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.outputs import OutputPlan
from rgbdface.utils import InputError, UsageError

runner = CliRunner()


def snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def no_model_load(monkeypatch):
    """Make loading a model fail loudly: these errors must come before it."""
    import rgbdface.cli.loading as loading

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the output check")

    for module in ("rgbdface.cli.estimate_depth", "rgbdface.cli.generate", "rgbdface.cli.talk", "rgbdface.cli.depth2img"):
        monkeypatch.setattr(f"{module}.load_for_command", refuse, raising=False)
    monkeypatch.setattr(loading, "load_for_command", refuse)


# ----------------------------------------------------------------------------- the plan itself
def test_plan_refuses_same_file_by_any_name(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    os.symlink(tmp_path, tmp_path / "link")
    for other in (tmp_path / "sub" / ".." / "a.png", tmp_path / "link" / "a.png", tmp_path / "hard.png"):
        with pytest.raises(UsageError, match="would both write"):
            OutputPlan().file(tmp_path / "a.png", "-o").file(other, "--normals").check()
    with pytest.raises(UsageError, match="would overwrite the input"):
        OutputPlan().input(tmp_path / "link" / "a.png", "the input").file(tmp_path / "hard.png", "-o").check()


def test_plan_folders(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ref.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match="would replace the folder holding the input"):
        OutputPlan().input(tmp_path / "in" / "ref.jpg", "the input").folder(tmp_path / "in", "--rgb-frames").check()
    with pytest.raises(UsageError, match="would replace the folder holding -o"):
        OutputPlan().file(tmp_path / "f" / "o.mp4", "-o").folder(tmp_path / "f", "--rgb-frames").check()
    with pytest.raises(UsageError, match="must not hold the input"):
        OutputPlan().input(tmp_path / "in" / "ref.jpg", "the input").folder(tmp_path, "the dataset", replaced=False, exclusive=True).check()
    # a folder written into may hold the inputs when it is not exclusive
    OutputPlan().input(tmp_path / "in" / "ref.jpg", "the input").folder(tmp_path / "in", "-o", replaced=False).file(tmp_path / "in" / "ref.png", "d").check()


def test_plan_locations(tmp_path):
    (tmp_path / "isdir.png").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a folder"):
        OutputPlan().file(tmp_path / "isdir.png", "-o").check()
    with pytest.raises(InputError, match="not a folder"):
        OutputPlan().folder(tmp_path / "file", "-o", replaced=False).check()
    with pytest.raises(InputError, match="is a file, not a folder"):
        OutputPlan().file(tmp_path / "file" / "deeper" / "o.png", "-o").check()
    OutputPlan().file(tmp_path / "new" / "deeper" / "o.png", "-o").check()
    assert not (tmp_path / "new").exists()  # checking creates nothing


# ----------------------------------------------------------------------------- estimate-depth
def test_estimate_depth_preview_of_one_input_is_the_depth_of_another(tiny_masked_model_dir, portrait_path, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    shutil.copy(portrait_path, tmp_path / "a.jpg")
    shutil.copy(portrait_path, tmp_path / "a_preview.jpg")
    out = tmp_path / "out"
    r = runner.invoke(app, ["estimate-depth", str(tmp_path / "a.jpg"), str(tmp_path / "a_preview.jpg"), "-o", str(out), "--preview",
                            "--model", str(tiny_masked_model_dir), "--json"])
    assert r.exit_code == 2, r.output
    assert "the preview of" in r.stderr and "the depth of" in r.stderr and "a_preview.png" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_estimate_depth_never_replaces_an_input(tiny_masked_model_dir, portrait_path, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    same = tmp_path / "same"
    same.mkdir()
    iio.imwrite(same / "a.png", iio.imread(portrait_path))
    before = snapshot(same)
    r = runner.invoke(app, ["estimate-depth", str(same), "-o", str(same), "--overwrite", "--model", str(tiny_masked_model_dir)])
    assert r.exit_code == 2, r.output
    assert "would overwrite the input" in r.stderr and "a.png" in r.stderr
    assert snapshot(same) == before


def test_estimate_depth_output_locations_checked_before_the_model(tiny_masked_model_dir, portrait_path, portraits, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    (tmp_path / "isdir.png").mkdir()
    r = runner.invoke(app, ["estimate-depth", str(portrait_path), "-o", str(tmp_path / "isdir.png"), "--model", str(tiny_masked_model_dir)])
    assert r.exit_code == 1 and "is a folder" in r.stderr, r.output  # not "skipped" with exit 0
    (tmp_path / "plain").write_text("a regular file")
    r = runner.invoke(app, ["estimate-depth", *map(str, portraits[:2]), "-o", str(tmp_path / "plain"), "--model", str(tiny_masked_model_dir)])
    assert r.exit_code == 1 and "not a folder" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1


def test_estimate_depth_folder_search_skips_its_own_output_folder(tiny_masked_model_dir, portrait_path, tmp_path):
    photos = tmp_path / "photos"
    (photos / "depth").mkdir(parents=True)
    shutil.copy(portrait_path, photos / "a.jpg")
    iio.imwrite(photos / "depth" / "a.png", np.ones((8, 8), np.uint16))  # an earlier run's output
    r = runner.invoke(app, ["estimate-depth", str(photos), "-o", str(photos / "depth"), "--model", str(tiny_masked_model_dir),
                            "--steps", "1", "-q", "--overwrite", "--json"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads(r.stdout)["written"] == [str(photos / "depth" / "a.png")]


# ----------------------------------------------------------------------------- the other commands
@pytest.fixture
def depth_map(tmp_path, portrait_path):
    d = np.zeros(iio.imread(portrait_path).shape[:2], np.uint16)
    d[100:400, 150:350] = 30000
    path = tmp_path / "d.png"
    iio.imwrite(path, d)
    return path


def test_relight_refuses_to_overwrite_its_depth(portrait_path, depth_map, tmp_path):
    before = depth_map.read_bytes()
    r = runner.invoke(app, ["relight", str(portrait_path), "--depth", str(depth_map), "-l", "1,0,1", "-o", str(depth_map)])
    assert r.exit_code == 2 and "would overwrite --depth" in r.stderr, r.output
    assert depth_map.read_bytes() == before
    r = runner.invoke(app, ["relight", str(portrait_path), "--depth", str(depth_map), "-l", "1,0,1", "-o", str(tmp_path / "o.png"),
                            "--normals", str(portrait_path)])
    assert r.exit_code == 2 and "would overwrite the image" in r.stderr, r.output


def test_depth2img_refuses_to_overwrite_an_input(tiny_masked_model_dir, portrait_path, depth_map, monkeypatch):
    no_model_load(monkeypatch)
    before = depth_map.read_bytes()
    r = runner.invoke(app, ["depth2img", str(depth_map), "--reference", str(portrait_path), "-o", str(depth_map),
                            "--model", str(tiny_masked_model_dir)])
    assert r.exit_code == 2 and "would overwrite the depth" in r.stderr, r.output
    assert depth_map.read_bytes() == before


def test_generate_checks_its_output_folder_first(tiny_model_dir, portrait_path, tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    (tmp_path / "plain").write_text("x")
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "plain"), "-n", "1", "--model", str(tiny_model_dir)])
    assert r.exit_code == 1 and "not a folder" in r.stderr, r.output
    (tmp_path / "out" / "astronaut_00_depth.png").mkdir(parents=True)
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "out"), "-n", "1", "--model", str(tiny_model_dir)])
    assert r.exit_code == 1 and "astronaut_00_depth.png: is a folder" in r.stderr, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut_00_depth.png"]


def test_talk_refuses_to_overwrite_its_inputs(tiny_model_dir, portrait_path, tmp_path, monkeypatch):
    from motion_helpers import write_video_with_audio

    no_model_load(monkeypatch)
    video = write_video_with_audio(tmp_path / "in.mp4", 0.5)
    before = video.read_bytes()
    r = runner.invoke(app, ["talk", str(portrait_path), str(video), "-o", str(video), "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and "would overwrite the input" in r.stderr, r.output
    assert video.read_bytes() == before
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(portrait_path, refs / "me.jpg")
    r = runner.invoke(app, ["talk", str(refs / "me.jpg"), str(video), "-o", str(tmp_path / "o.mp4"), "--rgb-frames", str(refs),
                            "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and "would replace the folder holding the input" in r.stderr, r.output
    assert (refs / "me.jpg").exists()


def test_prep_depth_keeps_inputs_out_of_the_dataset(portrait_path, tmp_path):
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    shutil.copy(portrait_path, data / "raw" / "me.jpg")
    r = runner.invoke(app, ["prep-depth", str(data / "raw" / "me.jpg"), "-o", str(data), "--size", "64"])
    assert r.exit_code == 2 and "must not hold the input" in r.stderr, r.output
    assert sorted(p.name for p in data.iterdir()) == ["raw"]


# ----------------------------------------------------------------------------- what killed writers leave
KILLED_WRITER = """
import os, sys
from pathlib import Path
from rgbdface.utils import atomic_dir, atomic_path, atomic_write_bytes
folder = Path(sys.argv[1])
with atomic_path(folder / "d.png") as tmp:
    tmp.write_bytes(b"half a png")
    with atomic_dir(folder / "frames") as frames:
        (frames / "000000.png").write_bytes(b"a frame")
        os.replace = lambda *a: os.kill(os.getpid(), 9)  # killed between writing and renaming
        atomic_write_bytes(folder / "e.npy", b"x")
"""


def _hidden(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(".")}


def test_temporaries_of_a_killed_writer_are_swept_by_the_next_plan(tmp_path):
    import subprocess
    import sys

    from rgbdface.utils import STALE_AFTER_S

    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True)
    assert p.returncode == -9
    left = _hidden(tmp_path)
    assert len(left) == 3 and all(".tmp" in n for n in left), left
    other = tmp_path / ".other.png.4194303.1.tmp"  # another target's temporary
    other.write_bytes(b"x")
    mine = tmp_path / f".d.{os.getppid()}.abc.tmp.png"  # a live process's: the test runner's parent
    mine.write_bytes(b"x")
    old = time.time() - 2 * STALE_AFTER_S
    for name in _hidden(tmp_path):
        os.utime(tmp_path / name, (old, old))
    OutputPlan().file(tmp_path / "d.png", "-o").folder(tmp_path / "frames", "--rgb-frames").file(tmp_path / "e.npy", "--npy").check()
    assert _hidden(tmp_path) == {other.name, mine.name}  # the killed writer's three are gone, nothing else
    assert not (tmp_path / "d.png").exists() and not (tmp_path / "frames").exists()


def test_a_recent_temporary_of_a_dead_process_is_kept(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True)
    assert p.returncode == -9
    before = _hidden(tmp_path)
    OutputPlan().file(tmp_path / "d.png", "-o").folder(tmp_path / "frames", "--rgb-frames").file(tmp_path / "e.npy", "--npy").check()
    assert _hidden(tmp_path) == before  # written seconds ago: perhaps another machine's writer on a shared disk
