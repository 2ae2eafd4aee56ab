"""prep-depth end to end on the shipped portraits, small videos made here, and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data import mesh
from rgbdface.data.camera import DEPTH_UNIT_MM
from rgbdface.data.io import load_depth, load_image
from rgbdface.data.manifest import load_manifest
from rgbdface.data.audio import read_wav

SIZE = 256


def run(*args: str, stdin: str | None = None):
    result = CliRunner().invoke(app, ["prep-depth", *args], input=stdin)
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("ds")
    r = run(str(examples_dir), "-o", str(out), "--size", str(SIZE), "--studio-views", "2", "--export-mesh", "ply", "-q")
    assert r.exit_code == 0, r.stderr
    return out, load_manifest(out)


def wild(samples, stem):
    return next(s for s in samples if s.source == "wild" and s.identity == stem)


def test_every_portrait_gives_a_wild_sample_and_studio_views(dataset, portraits):
    out, samples = dataset
    identities = {p.stem for p in portraits}
    assert {s.identity for s in samples} == identities
    for ident in identities:
        kinds = sorted(s.source for s in samples if s.identity == ident)
        assert kinds == ["studio", "studio", "wild"]
    s = wild(samples, "astronaut")
    assert load_image(s.rgb).shape == (SIZE, SIZE, 3)
    assert np.load(s.landmarks, allow_pickle=False).shape == (478, 3)
    assert (out / s.clip / "mesh_000000.ply").stat().st_size > 1000
    assert s.camera["fx"] == 2.0 * SIZE and s.depth_unit_mm == DEPTH_UNIT_MM


def _mask(s):
    return load_image(s.mask)[..., 0] > 127


def test_depth_positive_on_the_face_and_zero_off_it(dataset):
    _, samples = dataset
    for s in samples:
        depth, mask = load_depth(s.depth) * DEPTH_UNIT_MM, _mask(s)
        assert mask.sum() > 0.03 * SIZE * SIZE, s.id
        assert (depth[mask] > 0).all(), s.id  # every skin pixel has depth
        # a face 0.3-2 m from the camera, about 5-20 cm deep
        d = depth[depth > 0]
        assert 300 < d.min() and d.max() < 2000 and 50 < d.max() - d.min() < 200, (s.id, d.min(), d.max())
        lm = np.load(s.landmarks, allow_pickle=False)
        # outside the face outline (hair, background, clothes): no depth and no mask
        corners = np.zeros_like(mask)
        corners[:20, :20] = corners[:20, -20:] = corners[-20:, :20] = corners[-20:, -20:] = True
        assert depth[corners].max() == 0 and not mask[corners].any(), s.id
        above = int(lm[mesh.FOREHEAD_TOP, 1]) - 12  # hair line region above the forehead
        x = int(lm[mesh.FOREHEAD_TOP, 0])
        if above > 0:
            assert depth[above, x] == 0 and not mask[above, x], s.id


def test_nose_tip_nearer_than_cheeks_and_outline(dataset):
    _, samples = dataset
    for s in samples:
        if s.source != "wild" or s.identity == "cameraman":  # three-quarter view: cheek hidden
            continue
        depth = load_depth(s.depth)
        lm = np.load(s.landmarks, allow_pickle=False)

        def at(i):
            x, y = lm[i, :2].astype(int)
            patch = depth[y - 1 : y + 2, x - 1 : x + 2]
            return patch[patch > 0].mean()

        nose = at(mesh.NOSE_TIP)
        cheeks = [at(i) for i in (50, 280)]  # cheek centres
        outline = [at(i) for i in (234, 454, 152, 10)]  # sides of the face, chin, forehead top
        assert all(nose < c - 100 for c in cheeks), s.id  # >= 1 cm nearer (0.1 mm units)
        assert all(nose < o for o in outline), s.id


def test_mask_covers_skin_not_eyes_or_mouth(dataset):
    _, samples = dataset
    s = wild(samples, "astronaut")
    depth, mask = load_depth(s.depth), _mask(s)
    lm = np.load(s.landmarks, allow_pickle=False)
    inside = lambda i: tuple(lm[i, 1::-1].astype(int))  # (row, col)
    for i in (50, 280, 151, 199):  # cheeks, forehead, chin
        assert mask[inside(i)]
    for i in (mesh.RIGHT_IRIS_CENTRE, mesh.LEFT_IRIS_CENTRE):  # eyes: depth but no mask
        assert not mask[inside(i)] and depth[inside(i)] > 0
    # the astronaut smiles with open lips: the mouth opening between them has neither
    mouth = tuple(((lm[mesh.UPPER_LIP_INNER] + lm[mesh.LOWER_LIP_INNER]) / 2)[1::-1].astype(int))
    assert not mask[mouth] and depth[mouth] == 0


def test_manifest_snapshot_matches_rows(dataset):
    out, samples = dataset
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == len(samples)
    assert json.loads((out / "dataset.json").read_text())["depth_unit_mm"] == DEPTH_UNIT_MM


def test_rerun_skips_finished_inputs(dataset, examples_dir):
    out, samples = dataset
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "manifest" not in p.name}
    r = run(str(examples_dir), "-o", str(out), "--size", str(SIZE), "--json")
    assert r.exit_code == 0
    summary = json.loads(r.stdout)
    assert len(summary["skipped"]) == len({s.identity for s in samples}) and summary["done"] == 0
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after


def test_sharding_covers_every_input_once(tmp_path, examples_dir):
    seen = []
    for i in range(3):
        r = run(str(examples_dir), "-o", str(tmp_path / "ds"), "--size", "128", "--shard", f"{i}/3", "--json", "-q")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["done"] >= 1
    samples = load_manifest(tmp_path / "ds")
    seen = [s.input for s in samples]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == len(list(examples_dir.glob("*.[jp][pn]g")))


def test_stdin_list_and_workers(tmp_path, examples_dir):
    paths = [str(examples_dir / "astronaut.jpg"), str(examples_dir / "obama.jpg")]
    r = run("-", "-o", str(tmp_path), "--size", "128", "--workers", "2", "--json", "-q", stdin="\n".join(paths) + "\n")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["done"] == 2
    assert {s.identity for s in load_manifest(tmp_path)} == {"astronaut", "obama"}


# --- bad and odd inputs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_inputs(tmp_path_factory, examples_dir):
    import cv2
    import imageio.v3 as iio
    import skimage.data

    d = tmp_path_factory.mktemp("odd")
    astro = load_image(examples_dir / "astronaut.jpg")
    iio.imwrite(d / "noface.png", skimage.data.coffee())
    from tests_helpers import two_faces

    iio.imwrite(d / "twofaces.png", two_faces(examples_dir))
    iio.imwrite(d / "tiny.png", cv2.resize(astro, (24, 24), interpolation=cv2.INTER_AREA))
    iio.imwrite(d / "huge.jpg", cv2.resize(astro, (4096, 4096), interpolation=cv2.INTER_CUBIC), quality=85)
    (d / "corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
    data = (examples_dir / "astronaut.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    iio.imwrite(d / "gray.png", cv2.cvtColor(astro, cv2.COLOR_RGB2GRAY))
    iio.imwrite(d / "rgba.png", np.dstack([astro, np.full(astro.shape[:2], 200, np.uint8)]))
    cv2.imwrite(str(d / "deep16.png"), np.ascontiguousarray(astro[..., ::-1]).astype(np.uint16) * 257)  # 16-bit RGB
    return d


def test_bad_inputs_fail_one_line_each_and_the_batch_goes_on(tmp_path, odd_inputs):
    r = run(str(odd_inputs), "-o", str(tmp_path), "--size", "128", "--json")
    assert r.exit_code == 1
    errors = [l for l in r.stderr.splitlines() if l.startswith("rgbdface: error:")]
    by_file = {Path(l.split(": ")[2]).name: l for l in errors}
    assert set(by_file) == {"noface.png", "tiny.png", "corrupt.jpg", "truncated.jpg"}
    assert "no face found" in by_file["noface.png"]
    assert "pixels" in by_file["tiny.png"]
    assert "not a readable image" in by_file["corrupt.jpg"] and "not a readable image" in by_file["truncated.jpg"]
    assert all(len(l.splitlines()) == 1 for l in errors)
    assert "4 failed" in r.stderr.splitlines()[-1]
    summary = json.loads(r.stdout)
    assert summary["done"] == 5 and len(summary["failed"]) == 4
    samples = {Path(s.input).stem: s for s in load_manifest(tmp_path)}
    assert set(samples) == {"twofaces", "huge", "gray", "rgba", "deep16"}
    # odd formats give the same crop as the plain photo
    ref = load_image(samples["rgba"].rgb).astype(int)
    for stem in ("gray", "deep16"):
        assert load_image(samples[stem].rgb).shape == (128, 128, 3)
    assert np.abs(load_image(samples["deep16"].rgb).astype(int) - ref).mean() < 3
    # the huge image's box is the small one's, 8x
    small_box = np.array(samples["rgba"].box)
    np.testing.assert_allclose(np.array(samples["huge"].box) / 8, small_box, atol=3)


def test_largest_face_by_default_all_faces_on_request(tmp_path, odd_inputs):
    src = str(odd_inputs / "twofaces.png")
    assert run(src, "-o", str(tmp_path / "a"), "--size", "128", "-q").exit_code == 0
    assert len(load_manifest(tmp_path / "a")) == 1
    assert run(src, "-o", str(tmp_path / "b"), "--size", "128", "--all-faces", "-q").exit_code == 0
    samples = load_manifest(tmp_path / "b")
    assert len(samples) == 2 and len({s.identity for s in samples}) == 2


def test_all_faces_detects_once(monkeypatch, tmp_path, odd_inputs):
    from rgbdface.data import face, prep

    calls, detect = [], face.detect_faces
    counting = lambda image, *a, **k: calls.append(1) or detect(image, *a, **k)
    monkeypatch.setattr(face, "detect_faces", counting)
    monkeypatch.setattr(prep, "detect_faces", counting)
    r = prep.prepare_input(odd_inputs / "twofaces.png", tmp_path, prep.PrepConfig(size=128, all_faces=True))
    assert r.status == "done" and r.samples == 2
    assert len(calls) == 1  # each face is cropped from the one detection


def test_writer_threads_change_no_file(tmp_path, examples_dir, odd_inputs):
    inputs = [str(examples_dir / "astronaut.jpg"), str(odd_inputs / "twofaces.png"), str(odd_inputs / "noface.png")]
    files = {}
    for how in (("--threads", "0"), ("--threads", "3")):
        out = tmp_path / "-".join(how)
        r = run(*inputs, "-o", str(out), "--size", "128", "--all-faces", "--studio-views", "1", *how, "-q")
        assert r.exit_code == 1 and r.stderr.count("error:") == 1, r.stderr  # the face-less image fails alone
        files[how] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.suffix in (".jpg", ".png", ".npy")}
    first, *others = files.values()
    assert len(first) == 3 * 2 * 4 and all(f == first for f in others)  # 3 faces x (wild + studio) x 4 files
    assert run(inputs[0], "-o", str(tmp_path / "bad"), "--threads", "-1").exit_code == 2


def test_a_write_error_fails_its_own_input_while_the_next_is_fitted(monkeypatch, tmp_path, examples_dir):
    """Input i's files are written while input i + 1 goes through MediaPipe; an error in them is input i's alone,
    results come in input order, and input i has no rows file (it is redone on the next run)."""
    from rgbdface.data import prep

    write = prep.write_sample
    fitted = []
    real_prepare = prep.prepare_image

    def prepare_image(path, *args):
        fitted.append(path.name)
        return real_prepare(path, *args)

    def write_sample(root, clip, *args):
        if clip == prep.input_key(examples_dir / "biden.jpg"):
            assert fitted[-1] == "grace_hopper.jpg"  # the next input was fitted before this write ran
            raise OSError(28, "No space left on device")
        return write(root, clip, *args)

    def slow_write(*args):  # makes sure input i's write is still queued when input i + 1 starts
        import time

        time.sleep(0.3)
        return write_sample(*args)

    monkeypatch.setattr(prep, "prepare_image", prepare_image)
    monkeypatch.setattr(prep, "write_sample", slow_write)
    inputs = [examples_dir / n for n in ("astronaut.jpg", "biden.jpg", "grace_hopper.jpg")]
    seen = []
    summary = prep.prepare_dataset(inputs, tmp_path / "d", prep.PrepConfig(size=64, threads=1), on_result=seen.append)
    assert [Path(r.path).name for r in seen] == ["astronaut.jpg", "biden.jpg", "grace_hopper.jpg"]
    assert [r.status for r in seen] == ["done", "failed", "done"] and "No space left" in seen[1].error
    assert summary.done == 2 and len(summary.failed) == 1
    assert not prep.manifest.rows_path(tmp_path / "d", prep.input_key(inputs[1])).exists()


def test_image_over_the_pixel_limit_is_refused(monkeypatch, tmp_path, examples_dir):
    from rgbdface.data import face

    monkeypatch.setattr(face, "MAX_IMAGE_PIXELS", 100_000)
    r = run(str(examples_dir / "astronaut.jpg"), "-o", str(tmp_path), "--size", "128")
    assert r.exit_code == 1
    assert "too large; resize it" in r.stderr


# --- videos ---------------------------------------------------------------------------


def make_video(path: Path, frames: list[np.ndarray], fps: int, tone_hz: float | None) -> Path:
    """Write an H.264 video (and an AAC sine tone, when asked) with imageio-ffmpeg's ffmpeg."""
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    silent = path.with_suffix(".silent.mp4")
    writer = imageio_ffmpeg.write_frames(str(silent), (w, h), fps=fps, codec="libx264", quality=8, macro_block_size=16, ffmpeg_log_level="error")
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    if tone_hz is None:
        shutil.move(silent, path)
        return path
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    dur = len(frames) / fps
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(silent), "-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=44100:duration={dur}",
                    "-c:v", "copy", "-c:a", "aac", "-shortest", str(path)], check=True)
    silent.unlink()
    return path


def moving_frames(img: np.ndarray, n: int) -> list[np.ndarray]:
    """n frames of a portrait drifting right by 2 px per frame, 320 x 320."""
    return [np.ascontiguousarray(img[40 + 0 : 360, 40 + 2 * i - 20 : 360 + 2 * i - 20][:320, :320]) for i in range(n)]


def test_video_frames_audio_and_smooth_crop(tmp_path, examples_dir):
    img = load_image(examples_dir / "astronaut.jpg")
    video = make_video(tmp_path / "talk.mp4", moving_frames(img, 20), fps=30, tone_hz=440)
    r = run(str(video), "-o", str(tmp_path / "ds"), "--size", "128", "--json", "-q")
    assert r.exit_code == 0, r.stderr
    samples = load_manifest(tmp_path / "ds")
    # without writer threads, the same files, audio included
    r = run(str(video), "-o", str(tmp_path / "ds-serial"), "--size", "128", "--threads", "0", "-q")
    assert r.exit_code == 0, r.stderr
    same = lambda p: p.read_bytes() == (tmp_path / "ds-serial" / p.relative_to(tmp_path / "ds")).read_bytes()
    written = [p for p in (tmp_path / "ds").rglob("*") if p.suffix in (".jpg", ".png", ".npy", ".wav")]
    assert len(written) == 4 * len(samples) + 1 and all(same(p) for p in written)
    n = round(20 / 30 * 25)  # 30 fps resampled to 25 fps
    assert abs(len(samples) - n) <= 1
    assert [s.frame for s in samples] == list(range(len(samples)))
    assert all(s.fps == 25 and s.audio is not None for s in samples)
    audio, sr = read_wav(samples[0].audio)
    assert sr == 16000 and audio.ndim == 1 and len(audio) == len(samples) * 640
    # the tone is there: its spectrum peaks at 440 Hz
    spec = np.abs(np.fft.rfft(audio[:8000]))
    assert abs(np.argmax(spec) * 16000 / 8000 - 440) < 5
    # the crop follows the drift smoothly: box centres move steadily, no jumps
    cx = np.array([(s.box[0] + s.box[2]) / 2 for s in samples])
    steps = np.diff(cx)
    assert np.all(np.abs(steps) < 6)
    assert cx[-1] - cx[0] < 0  # content moves left in the frame as the window moves right


def test_video_without_audio_and_wav2vec_features(tmp_path, examples_dir):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    img = load_image(examples_dir / "obama.jpg")
    frames = [np.ascontiguousarray(img[60:380, 64:384]) for _ in range(6)]
    silent = make_video(tmp_path / "silent.mp4", frames, fps=25, tone_hz=None)
    voiced = make_video(tmp_path / "voiced.mp4", frames, fps=25, tone_hz=220)
    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    Wav2Vec2Model(cfg).save_pretrained(tmp_path / "w2v", safe_serialization=True)
    r = run(str(silent), str(voiced), "-o", str(tmp_path / "ds"), "--size", "128", "--wav2vec", str(tmp_path / "w2v"), "-q")
    assert r.exit_code == 0, r.stderr
    samples = load_manifest(tmp_path / "ds")
    by = {Path(s.input).stem: [x for x in samples if Path(x.input).stem == Path(s.input).stem] for s in samples}
    assert len(by["silent"]) == 6 and all(s.audio is None and s.audio_features is None for s in by["silent"])
    feats = np.load(by["voiced"][0].audio_features, allow_pickle=False)
    assert feats.shape == (6, 3 * 16)  # frames x (embedding + 2 layers) * hidden size


def test_no_inputs_found_is_an_error(tmp_path):
    r = run(str(tmp_path / "missing.png"), "-o", str(tmp_path / "ds"))
    assert r.exit_code == 1 and "missing.png: no such file" in r.stderr
    assert r.stdout == ""


def test_wav2vec_features_come_from_the_caller(tmp_path):
    """prep-depth (the data layer) stores wav2vec features computed by a function it is given."""
    from rgbdface.data.prep import PrepConfig

    (tmp_path / "w2v").mkdir()
    with pytest.raises(ValueError, match="audio_features"):
        PrepConfig(wav2vec=tmp_path / "w2v").check()
    PrepConfig(wav2vec=tmp_path / "w2v", audio_features=lambda audio, frames: np.zeros((frames, 4), np.float16)).check()


def test_studio_renders_do_not_depend_on_where_the_input_lies(tmp_path, portrait_path):
    """A dataset made from a copy of the input in another folder (another clone) has the same renders,
    so that the README's held-out numbers can be reproduced anywhere."""
    from rgbdface.data.io import load_depth
    from rgbdface.data.manifest import load_manifest
    from rgbdface.data.prep import PrepConfig, prepare_dataset

    copies = []
    for where in ("a", "b/c"):
        (tmp_path / where).mkdir(parents=True)
        copies.append(shutil.copy(portrait_path, tmp_path / where / portrait_path.name))
    views = []
    for i, src in enumerate(copies):
        root = tmp_path / f"data{i}"
        assert not prepare_dataset([src], root, PrepConfig(size=64, studio_views=2, talking_clips=1, clip_seconds=0.2)).failed
        rows = [s for s in load_manifest(root) if s.source == "studio"]
        views.append(([s.view for s in rows if s.view], [load_depth(s.depth) for s in rows]))
    assert views[0][0] == views[1][0] and len(views[0][0]) >= 2
    assert all(np.array_equal(a, b) for a, b in zip(views[0][1], views[1][1]))
