"""Synthetic talking clips from prep-depth: frame and audio lengths, mouth following the audio, blinks."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data import mesh
from rgbdface.data.camera import DEPTH_UNIT_MM
from rgbdface.data.io import load_depth, load_image
from rgbdface.data.manifest import load_manifest
from rgbdface.data.speech import synthesize
from rgbdface.data.audio import read_wav

SIZE = 128
SECONDS = 1.6  # 40 frames at 25 fps


@pytest.fixture(scope="module")
def clips(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("talk")
    r = CliRunner().invoke(app, ["prep-depth", str(examples_dir / "obama.jpg"), "-o", str(out), "--size", str(SIZE),
                                 "--talking-clips", "2", "--clip-seconds", str(SECONDS), "-q"])
    assert r.exit_code == 0, r.stderr
    samples = load_manifest(out)
    by_clip: dict[str, list] = {}
    for s in samples:
        if s.clip.endswith(("-talk0", "-talk1")):
            by_clip.setdefault(s.clip, []).append(s)
    return samples, by_clip


def frame_rms(audio: np.ndarray, n_frames: int) -> np.ndarray:
    per = len(audio) // n_frames
    return np.sqrt((audio[: per * n_frames].reshape(n_frames, per) ** 2).mean(1))


def test_clip_frames_and_audio_lengths(clips):
    samples, by_clip = clips
    assert len(by_clip) == 2 and len(samples) == 1 + 2 * 40  # the portrait itself and two clips
    for clip, rows in by_clip.items():
        n = round(SECONDS * 25)
        assert [s.frame for s in rows] == list(range(n))
        assert all(s.source == "studio" and s.identity == "obama" and s.fps == 25 for s in rows)
        assert len({s.audio for s in rows}) == 1
        audio, sr = read_wav(rows[0].audio)
        assert sr == 16000 and audio.ndim == 1
        assert abs(len(audio) - n / 25 * 16000) <= 640
        s = rows[n // 2]
        depth, mask = load_depth(s.depth) * DEPTH_UNIT_MM, load_image(s.mask)[..., 0] > 127
        assert load_image(s.rgb).shape == (SIZE, SIZE, 3) and mask.sum() > 0.03 * SIZE * SIZE
        assert (depth[mask] > 300).all() and depth[~(depth > 0)].size > 0
    a, b = (read_wav(rows[0].audio)[0] for rows in by_clip.values())
    assert not np.allclose(a, b)  # each clip has its own audio


def test_mouth_opening_follows_the_audio(clips):
    _, by_clip = clips
    for clip, rows in by_clip.items():
        lms = [np.load(s.landmarks, allow_pickle=False) for s in rows]
        gap = np.array([np.linalg.norm(lm[mesh.UPPER_LIP_INNER, :2] - lm[mesh.LOWER_LIP_INNER, :2]) for lm in lms])
        rms = frame_rms(read_wav(rows[0].audio)[0], len(rows))
        assert np.corrcoef(gap, rms)[0, 1] > 0.5, clip
        assert gap.max() - gap.min() > 0.015 * SIZE, clip  # the mouth visibly opens and closes
        # pauses: silent frames exist and the mouth is nearer closed there than on loud frames
        quiet, loud = rms < 0.1 * rms.max(), rms > 0.5 * rms.max()
        assert quiet.any() and loud.any() and gap[quiet].mean() < gap[loud].mean()


def test_synthetic_speech_is_seeded_and_speech_like():
    a = synthesize(3.0, np.random.default_rng(7))
    assert np.array_equal(a.audio, synthesize(3.0, np.random.default_rng(7)).audio)
    assert not np.allclose(a.audio, synthesize(3.0, np.random.default_rng(8)).audio)
    assert len(a.audio) == 48000 and np.abs(a.audio).max() <= 1.0
    # syllable rhythm: loudness peaks (syllable nuclei) 1.5-6 per second, with pauses between words
    rms = np.convolve(frame_rms(a.audio, 300), np.ones(5) / 5, mode="same")  # 10 ms frames, lightly smoothed
    peaks = (rms[1:-1] > rms[:-2]) & (rms[1:-1] >= rms[2:]) & (rms[1:-1] > 0.3 * rms.max())
    assert 1.5 * 3 <= peaks.sum() <= 6 * 3
    assert 0.05 < (rms < 0.05 * rms.max()).mean() < 0.5
    # voiced: the loudest 100 ms has its lowest strong spectral peak at a speaking pitch
    k = int(np.argmax(frame_rms(a.audio, 30)))
    seg = a.audio[k * 1600 : (k + 1) * 1600] * np.hanning(1600)
    power = np.abs(np.fft.rfft(seg, 16000)) ** 2
    strong = np.nonzero(power > 0.1 * power.max())[0]
    assert 60 <= strong.min() <= 450


def test_blink_closes_the_eyes(examples_dir):
    from rgbdface.data.depth import render_face_depth
    from rgbdface.data.face import crop_face
    from rgbdface.data.studio import View, render_view

    crop = crop_face(load_image(examples_dir / "biden.jpg"), SIZE, with_landmarks=True)
    fd = render_face_depth(crop.landmarks, SIZE)
    renders = [render_view(crop.image, crop.landmarks, fd.vertices, fd.camera, View(0, 0, 0, 0, (0, 0, -1.0), ((90, 90, 90), (90, 90, 90)), blink))
               for blink in (0.0, 1.0)]
    lid = [np.linalg.norm(r.landmarks[159, :2] - r.landmarks[145, :2]) for r in renders]  # right eye, upper vs lower lid
    assert lid[1] < 0.2 * lid[0]
    above_nose = int(renders[0].landmarks[mesh.NOSE_TIP, 1])
    eye_area = [(~r.mask & (r.depth > 0))[:above_nose].sum() for r in renders]  # depth but no skin: the open eyes
    assert eye_area[1] < 0.2 * eye_area[0]


def test_bad_clip_length_is_refused(tmp_path, examples_dir):
    r = CliRunner().invoke(app, ["prep-depth", str(examples_dir / "obama.jpg"), "-o", str(tmp_path), "--talking-clips", "1", "--clip-seconds", "0"])
    assert r.exit_code != 0 and "--clip-seconds" in r.stderr


def test_talk_jaw_widens_the_mouth_motion(clips, tmp_path, examples_dir):
    out = tmp_path / "wide"
    r = CliRunner().invoke(app, ["prep-depth", str(examples_dir / "obama.jpg"), "-o", str(out), "--size", str(SIZE),
                                 "--talking-clips", "2", "--clip-seconds", str(SECONDS), "--talk-jaw", "30", "-q"])
    assert r.exit_code == 0, r.stderr
    wide: dict[str, list] = {}
    for s in load_manifest(out):
        if s.clip.endswith(("-talk0", "-talk1")):
            wide.setdefault(s.clip, []).append(s)
    _, default = clips
    for (_, rows), (_, base) in zip(sorted(wide.items()), sorted(default.items())):
        jaw, jaw0 = np.array([s.view["jaw"] for s in rows]), np.array([s.view["jaw"] for s in base])
        # the same seed draws the same speech: the jaw follows the same envelope, twice as wide (the default is 15)
        np.testing.assert_allclose(jaw, 2 * jaw0, rtol=1e-3, atol=1e-3)
        assert jaw.max() <= 1.2 * 30 + 1e-6
    for bad in ("0", "41"):
        r = CliRunner().invoke(app, ["prep-depth", str(examples_dir / "obama.jpg"), "-o", str(tmp_path / "bad"), "--talking-clips", "1", "--talk-jaw", bad])
        assert r.exit_code == 2 and "--talk-jaw" in r.stderr
