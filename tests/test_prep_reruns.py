"""prep-depth run again on finished inputs with other options: more --studio-views or --talking-clips
are added to them; options it cannot apply to a finished input are named."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.manifest import load_manifest

runner = CliRunner()


@pytest.fixture
def data(portrait_dataset, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(portrait_dataset, out)  # astronaut at 64 px with --studio-views 2 (jpg)
    return out


def studio(samples, kind: str = "-studio"):
    return [s for s in samples if s.clip.endswith(kind) or (kind == "-talk" and "-talk" in s.clip)]


def test_more_views_and_clips_are_added(data, portrait_path, tmp_path):
    before = load_manifest(data)
    first_two = [(s.rgb.read_bytes(), s.depth.read_bytes()) for s in studio(before)]
    r = runner.invoke(app, ["prep-depth", str(portrait_path), "-o", str(data), "--size", "64", "--studio-views", "4",
                            "--talking-clips", "1", "--clip-seconds", "0.2", "--json", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["done"] == 1 and rep["samples"] == 2 + 5  # two more views, one clip of 5 frames
    after = load_manifest(data)
    views = studio(after)
    assert [s.frame for s in views] == [0, 1, 2, 3]
    assert [(s.rgb.read_bytes(), s.depth.read_bytes()) for s in views[:2]] == first_two  # the earlier ones untouched
    talk = studio(after, "-talk")
    assert len(talk) == 5 and talk[0].audio is not None and talk[0].audio.is_file()
    # The added views are the ones a single run with --studio-views 4 makes (drawn alike)
    fresh = tmp_path / "fresh"
    r = runner.invoke(app, ["prep-depth", str(portrait_path), "-o", str(fresh), "--size", "64", "--studio-views", "4", "-q"])
    assert r.exit_code == 0, r.output
    assert [s.view for s in views] == [s.view for s in studio(load_manifest(fresh))]
    # Run again: nothing is missing any more, so nothing is done and nothing is said
    r = runner.invoke(app, ["prep-depth", str(portrait_path), "-o", str(data), "--size", "64", "--studio-views", "4",
                            "--talking-clips", "1", "--clip-seconds", "0.2", "-q"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert len(load_manifest(data)) == len(after)


def test_an_interrupted_extension_removes_only_what_it_added(data, portrait_path, monkeypatch):
    import rgbdface.data.prep as prep

    before = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file() and p.name != "manifest.jsonl")
    real, calls = prep._render_and_write, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "_render_and_write", fails_second)
    r = runner.invoke(app, ["prep-depth", str(portrait_path), "-o", str(data), "--size", "64", "--studio-views", "4", "-q"])
    assert r.exit_code == 1, r.output
    after = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file() and p.name != "manifest.jsonl")
    assert after == before  # the finished input is as it was: no orphan files, its rows file unchanged


def test_options_that_cannot_apply_are_named(data, portrait_path):
    base = ["prep-depth", str(portrait_path), "-o", str(data), "--size", "64"]
    r = runner.invoke(app, [*base, "--studio-views", "2", "-q"])
    assert r.exit_code == 0 and r.stderr == "", r.output  # the same options: skipped without a word under --quiet
    r = runner.invoke(app, [*base, "--studio-views", "1", "--rgb-format", "png", "-q"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    assert lines == [f"rgbdface: warning: {portrait_path}: already done with --studio-views 2 (now 1), --rgb-format jpg (now png); "
                     "pass --overwrite to redo it with this run's options"]
