"""prep-depth run again on finished inputs with other options: it says which options differ
(the inputs are skipped, so the new options would otherwise silently not apply)."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from rgbdface.cli.app import app

runner = CliRunner()


def test_a_rerun_with_more_views_says_what_differs(portrait_dataset, portrait_path, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(portrait_dataset, data)  # astronaut at 64 px with --studio-views 2
    base = ["prep-depth", str(portrait_path), "-o", str(data), "--size", "64"]
    r = runner.invoke(app, [*base, "--studio-views", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # the same options: skipped without a word under --quiet
    r = runner.invoke(app, [*base, "--studio-views", "4", "--talking-clips", "1", "--rgb-format", "png", "-q"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == (f"rgbdface: warning: {portrait_path}: already done with --studio-views 2 (now 4), --talking-clips 0 (now 1), "
                        "--rgb-format jpg (now png); pass --overwrite to redo it with this run's options")
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in portrait_dataset.iterdir())  # nothing added
