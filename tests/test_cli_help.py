"""The app lists its commands without importing the heavy libraries."""

import subprocess
import sys

from typer.testing import CliRunner

from rgbdface.cli.app import app


def test_help_lists_eval_and_relight():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    assert "eval" in r.stdout and "relight" in r.stdout


def test_importing_the_app_stays_light():
    code = "import sys, rgbdface.cli.app; print(sorted(m for m in ('numpy', 'torch', 'imageio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
