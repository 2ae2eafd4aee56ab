"""Outputs of one command appear together or not at all: a write that fails (a full disk, a file size limit)
or a SIGTERM leaves no partial output, no temporary file and no traceback."""

import contextlib
import resource
import signal

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app

runner = CliRunner()


@contextlib.contextmanager
def file_size_limit(nbytes):
    """Writes past `nbytes` in any one file fail in the kernel (EFBIG; Python ignores SIGXFSZ), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_generate_writes_all_its_samples_or_none(tiny_model_dir, portrait_path, tmp_path):
    out = tmp_path / "out"
    # an RGB sample is ~2.7 KB and a depth map ~2.1 KB, a preview ~5.5 KB: the first preview cannot be written
    with file_size_limit(4000):
        r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(out), "-n", "2", "--steps", "1", "--model", str(tiny_model_dir), "-q"])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rgbdface: error:") and "astronaut_00_preview.png" in lines[0], r.stderr
    assert "Traceback" not in r.output and ".tmp" not in lines[0]
    assert sorted(out.iterdir()) == []  # no sample 00 alone, no temporary files
    r = runner.invoke(app, ["generate", str(portrait_path), "-o", str(out), "-n", "2", "--steps", "1", "--model", str(tiny_model_dir), "-q"])
    assert r.exit_code == 0 and len(list(out.iterdir())) == 6


def test_prep_depth_leaves_no_orphan_samples_when_writes_fail(portrait_path, tmp_path):
    from rgbdface.data import manifest
    from rgbdface.data.prep import PrepConfig, prepare_dataset

    root = tmp_path / "data"
    with file_size_limit(5000):  # a sample's landmarks (5.9 KB) cannot be written, its crop and depth can
        summary = prepare_dataset([portrait_path], root, PrepConfig(size=64, studio_views=2))
    assert len(summary.failed) == 1 and "too large" in summary.failed[0][1]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    named = {row[k] for row in manifest.collect_rows(root) for k in ("rgb", "depth", "mask", "landmarks")} if (root / "rows").is_dir() else set()
    assert [f for f in files if f not in named and "/" in f and not f.startswith("rows/")] == []  # every sample file is named by a row
    summary = prepare_dataset([portrait_path], root, PrepConfig(size=64, studio_views=2))
    assert summary.done == 1 and summary.samples == 3


@pytest.fixture(scope="module")
def talk_inputs(tmp_path_factory):
    """A tiny stage-3 model folder and 0.9 s of speech-like audio."""
    from motion_helpers import speech_like, tiny_motion_model, write_wav

    folder = tmp_path_factory.mktemp("talk")
    tiny_motion_model().save_pretrained(folder / "tiny3")
    return folder / "tiny3", write_wav(folder / "speech.wav", speech_like(0.9))


def test_talk_on_a_full_disk_leaves_no_video_and_no_frames(talk_inputs, portrait_path, tmp_path):
    model_dir, speech = talk_inputs
    out = tmp_path / "out"
    out.mkdir()
    with file_size_limit(6000):  # frames (~3 KB each) can be written, the video (~20 KB with its audio) cannot
        r = runner.invoke(app, ["talk", str(portrait_path), str(speech), "-o", str(out / "t.mp4"), "--rgb-frames", str(out / "rgb"),
                                "--steps", "1", "--model", str(model_dir), "-q"])
    assert r.exit_code == 1, r.output  # not a truncated video with exit 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out / "t.mp4") in lines[0] and "ffmpeg could not finish" in lines[0], r.stderr
    assert sorted(out.iterdir()) == []  # the frames did not appear without the video


def test_prep_depth_sweeps_the_samples_of_a_killed_run(portrait_path, tmp_path):
    from rgbdface.data import manifest
    from rgbdface.data.prep import PrepConfig, input_key, prepare_dataset

    root = tmp_path / "data"
    key = input_key(portrait_path)
    for clip in (key, f"{key}-studio"):  # what `kill -9` leaves: samples written, no rows file yet
        (root / clip).mkdir(parents=True)
        (root / clip / "rgb_000007.jpg").write_bytes(b"half")
        (root / clip / ".depth_000007.png.123.456.tmp").write_bytes(b"half")
    summary = prepare_dataset([portrait_path], root, PrepConfig(size=64, studio_views=1))
    assert summary.done == 1
    named = {row[k] for row in manifest.collect_rows(root) for k in ("rgb", "depth", "mask", "landmarks")}
    samples = {p.relative_to(root).as_posix() for clip in (key, f"{key}-studio") for p in (root / clip).iterdir()}
    assert samples == named


def test_sweeping_an_input_removes_its_own_clip_folders_only(tmp_path):
    from rgbdface.data import manifest
    from rgbdface.data.prep import remove_input_files

    key = "obama-1234abcd"
    own = [key, f"{key}-f0", f"{key}-f1-studio", f"{key}-talk2", f"{key}-f0-talk0", f"{key}-studio"]
    others = [f"{key}-studiox", f"{key}-f0-1234abcd", "obama-1234abce", f"x{key}", f"{key}-talk"]
    for name in own + others:
        (tmp_path / name).mkdir()
    (tmp_path / f"{key}-talk9").write_bytes(b"a file, not a clip folder")
    manifest.rows_path(tmp_path, key).parent.mkdir(parents=True, exist_ok=True)
    manifest.rows_path(tmp_path, key).write_text("{}\n")
    remove_input_files(tmp_path, key)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != manifest.rows_path(tmp_path, key).parent.name) == sorted(others + [f"{key}-talk9"])
    assert not manifest.rows_path(tmp_path, key).exists()
    remove_input_files(tmp_path / "missing", key)  # no dataset folder yet: nothing to sweep


def test_sigterm_during_talk_removes_temporary_videos_and_frame_folders(talk_inputs, portrait_path, tmp_path, monkeypatch):
    import rgbdface.pipelines.talk as talk_module

    model_dir, speech = talk_inputs
    portrait = portrait_path
    out = tmp_path / "out"
    out.mkdir()
    calls = []
    denoise = talk_module.denoise_clip

    def terminated_on_the_second_clip(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the videos are being encoded and frames written by now
            assert any(p.name.startswith(".") for p in out.iterdir())
            signal.raise_signal(signal.SIGTERM)
        return denoise(*args, **kwargs)

    monkeypatch.setattr(talk_module, "denoise_clip", terminated_on_the_second_clip)
    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # without the command's own handling: ignored, not fatal
    try:
        r = runner.invoke(app, ["talk", str(portrait), str(speech), "-o", str(out / "t.mp4"), "--depth-video", str(out / "d.mp4"),
                                "--rgb-frames", str(out / "rgb"), "--steps", "1", "--model", str(model_dir), "-q"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(calls) == 2, "the run went on after SIGTERM"
    assert r.exit_code == 143, r.output
    assert "terminated" in r.stderr and "Traceback" not in r.output
    assert sorted(out.iterdir()) == []
