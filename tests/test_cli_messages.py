"""Messages on stderr: usage errors in one line (help pages stay rich), log lines never wrapped nor mixed
into a progress bar, library warnings as one line, a line on Ctrl-C, write errors once and naming the target."""

import errno
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app

runner = CliRunner()


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("rgbdface: error:")]


@pytest.mark.parametrize("args, message", [
    (["estimate-depth", "--quite", "x.jpg"], "No such option: --quite"),
    (["nope"], "No such command 'nope'"),
    (["estimate-depth", "x.jpg", "-o", "y.png", "--steps", "0"], "Invalid value for '--steps'"),
    (["eval", "--format"], "Option '--format' requires an argument"),
])
def test_usage_errors_are_one_line(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == error_lines(r.stderr) and len(error_lines(r.stderr)) == 1, r.stderr
    assert message in r.stderr and "╭" not in r.stderr and "Usage:" not in r.stderr


def test_help_pages_keep_their_layout():
    r = runner.invoke(app, ["estimate-depth", "--help"])
    assert r.exit_code == 0 and "╭─ Options" in r.stdout and "Usage:" in r.stdout
    r = runner.invoke(app, ["depth2img"])  # no arguments: the help page, as before
    assert "Usage:" in r.output and not error_lines(r.output)


def test_log_lines_are_never_wrapped(capsys):
    from rgbdface.cli.common import log

    long = "estimated depth for 2 image(s), each at its own size " + "x" * 150 + " → out/"
    log(long)
    assert capsys.readouterr().err == long + "\n"


def test_estimate_depth_log_has_whole_lines_and_no_bar_in_a_file(tmp_path):
    """stderr that is not a terminal (a log file) gets whole lines: no redrawn bar, no line cut at 80 columns."""
    portrait = os.path.join(os.path.dirname(__file__), "..", "examples", "astronaut.jpg")
    r = runner.invoke(app, ["estimate-depth", portrait, "-o", str(tmp_path / "d.png"), "--steps", "1"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert "\r" not in r.stderr and "%|" not in r.stderr
    assert any(line.startswith("model: ") for line in lines)
    done = [line for line in lines if line.startswith("estimated depth for 1 image")]
    assert len(done) == 1 and done[0].endswith(str(tmp_path / "d.png")) and len(done[0]) > 80


def test_a_wav_in_an_image_batch_is_one_line_and_no_library_warning(tmp_path, portrait_path):
    from train_helpers import write_wav

    wav = tmp_path / "speech.wav"
    write_wav(wav, 0.3 * np.sin(np.arange(16000) / 5.0))
    r = runner.invoke(app, ["estimate-depth", str(wav), str(portrait_path), "-o", str(tmp_path / "out"), "--steps", "1"])
    assert r.exit_code == 1
    assert f"rgbdface: error: {wav}: not a readable image" in r.stderr
    assert "Warning" not in r.stderr and "channels" not in r.stderr
    assert (tmp_path / "out" / "astronaut.png").is_file()


def test_library_warnings_are_one_line(monkeypatch, tmp_path, portrait_path):
    import warnings

    import rgbdface.data.face as face

    real = face.crop_face

    def noisy(*args, **kwargs):
        warnings.warn("a library\n   says something\n over lines", RuntimeWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(face, "crop_face", noisy)
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "g"), "-n", "1", "--steps", "1", "-q"])
    assert "rgbdface: warning: a library says something over lines (RuntimeWarning)\n" in r.stderr, r.stderr


def test_ctrl_c_says_so(monkeypatch, tmp_path, portrait_path):
    import rgbdface.data.face as face

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(face, "crop_face", interrupted)
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(tmp_path / "g"), "-n", "1", "--steps", "1"])
    assert r.exit_code == 130
    assert "rgbdface: interrupted (Ctrl-C)" in r.stderr
    assert not (tmp_path / "g").exists()


def test_atomic_write_onto_a_folder_names_the_target(tmp_path):
    from rgbdface.utils import atomic_path, describe_os_error

    target = tmp_path / "isdir.png"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
    assert e.value.filename == str(target) and ".tmp" not in str(e.value)
    assert describe_os_error(e.value) == f"{target}: is a folder; name a file, or remove the folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["isdir.png"]  # no temporary file left


def test_a_single_input_write_error_is_printed_once(monkeypatch, tmp_path, portrait_path):
    import rgbdface.utils

    out = tmp_path / "d.png"

    def full_disk(writers):  # as write_together reports a full disk met while writing the temporary file
        raise rgbdface.utils.write_error(out, OSError(errno.ENOSPC, "No space left on device", str(out.parent / ".d.x.tmp.png")))

    monkeypatch.setattr(rgbdface.utils, "write_together", full_disk)
    r = runner.invoke(app, ["estimate-depth", str(portrait_path), "-o", str(out), "--steps", "1"])
    assert r.exit_code == 1
    assert error_lines(r.stderr) == [f"rgbdface: error: {portrait_path}: {out}: no space left on the device; free some space "
                                     "or choose another location"]


@pytest.mark.parametrize("command", ["generate", "estimate-depth", "depth2img", "relight", "talk"])
def test_generating_commands_state_their_output_size_in_help(command):
    r = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "Output size:" in r.stdout and ("64 x 64 px" in r.stdout or "image's own" in r.stdout), r.stdout
