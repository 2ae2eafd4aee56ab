"""Measures of generated results (rgbdface.metrics.generated, `rgbdface score`) on small made-up inputs,
each checked against a hand computation."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.io import save_depth16, save_image
from rgbdface.metrics import generated as g

runner = CliRunner()


def uniform(colour, size=64):
    return np.broadcast_to(np.asarray(colour, np.uint8), (size, size, 3)).copy()


def test_boxes_at_the_default_margin():
    # face box: 64 / 2.2 = 29.09 px wide, centred: 17.45 .. 46.55, rounded; face centre: half as wide
    assert g.face_box(64) == (17, 47, 17, 47)
    assert g.face_centre_box(64) == (25, 39, 25, 39)  # (64 - 14.55) / 2 = 24.73 .. 39.27, rounded
    # mouth: rows 17 + 0.62·30 .. 17 + 0.92·30, columns 17 + 0.3·30 .. 17 + 0.7·30
    assert g.mouth_box(64) == (36, 45, 26, 38)


def test_flicker_is_the_mean_absolute_frame_change():
    frames = np.stack([uniform((10, 10, 10)), uniform((16, 16, 16)), uniform((13, 13, 13))])
    assert g.flicker(frames) == pytest.approx((6 + 3) / 2)
    assert np.isnan(g.flicker(frames[:1]))
    # computed in float: 10 -> 250 is a change of 240 (uint8 arithmetic would wrap to 16)
    assert g.flicker(np.stack([uniform((10, 10, 10)), uniform((250, 250, 250))])) == pytest.approx(240.0)


def test_colour_distance_is_cie76_of_the_face_centre():
    # sRGB red and blue in CIE L*a*b* (D65): (53.2408, 80.0925, 67.2032) and (32.2970, 79.1875, -107.8602)
    red, blue = uniform((255, 0, 0)), uniform((0, 0, 255))
    expected = np.sqrt((53.2408 - 32.2970) ** 2 + (80.0925 - 79.1875) ** 2 + (67.2032 + 107.8602) ** 2)
    assert g.colour_distance(red, blue) == pytest.approx(expected, abs=0.05)
    # only the face centre counts: a frame that differs elsewhere has distance 0
    framed = red.copy()
    framed[:20] = (0, 255, 0)
    assert g.colour_distance(red, framed) == pytest.approx(0.0, abs=1e-9)
    # a reference of another size is compared at the frame's size
    assert g.colour_distance(uniform((255, 0, 0), 256), blue) == pytest.approx(expected, abs=0.05)
    # grey has no chroma; red's is hypot(80.09, 67.20)
    assert g.chroma(uniform((128, 128, 128))) == pytest.approx(0.0, abs=0.01)
    assert g.chroma(red) == pytest.approx(np.hypot(80.0925, 67.2032), abs=0.05)


def face_depth(mouth=None, mouth_rows=None):
    """A 64 px depth frame: 1000 on a face-box-sized region, the mouth box set to `mouth` (None: as the face)."""
    d = np.zeros((64, 64))
    d[17:47, 17:47] = 1000.0
    if mouth is not None:
        y0, y1, x0, x1 = g.mouth_box(64)
        rows = slice(y0, y1) if mouth_rows is None else mouth_rows
        d[rows, x0:x1] = mouth
    return d


def test_mouth_opening_by_hand():
    # flat face: every normalised value 0
    assert g.mouth_opening(face_depth()) == 0.0
    # the mouth box farther than the rest (12 % of the face box, above the 98 % quantile): normalised 1 there
    assert g.mouth_opening(face_depth(1100.0)) == pytest.approx(1.0)
    # no depth in the mouth box (a mesh's open mouth): counted as far
    assert g.mouth_opening(face_depth(0.0)) == pytest.approx(1.0)
    # the mouth box's top 4 of 9 rows farther: 4/9 of it at 1, the rest at 0
    y0 = g.mouth_box(64)[0]
    assert g.mouth_opening(face_depth(1100.0, slice(y0, y0 + 4))) == pytest.approx(4 / 9)


def test_face_sized_depth():
    assert g.face_sized_depth(face_depth())  # 900 of 4096 pixels, all of the face box
    assert not g.face_sized_depth(np.full((64, 64), 1000.0))  # everything valid: background taken for face
    blob = np.zeros((64, 64))
    blob[30:34, 30:34] = 1000.0
    assert not g.face_sized_depth(blob)  # 16 pixels
    off = np.zeros((64, 64))
    off[:, :20] = 1000.0  # 31 % of the frame, but beside the face box
    assert not g.face_sized_depth(off)


def test_loudness_per_frame_and_pearson_by_hand():
    sr, fps = 16000, 25.0
    amp = [1.0, 0.1, 0.0]
    wave = np.concatenate([a * np.where(np.arange(640) % 2, 1.0, -1.0) for a in amp])  # RMS = amplitude
    np.testing.assert_allclose(g.loudness_per_frame(wave, 3, fps, sr), [0.0, -20.0, -60.0], atol=1e-9)  # floored 60 dB down
    assert g.pearson([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / np.sqrt(2 * 78 / 9))
    assert np.isnan(g.pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        g.pearson([1, 2], [1, 2, 3])


def test_mouth_follows_audio_gives_r_one():
    levels = np.array([1.0, 0.1, 0.5, 0.05, 1.0, 0.2])
    wave = np.concatenate([a * np.where(np.arange(640) % 2, 1.0, -1.0) for a in levels])
    db = 20 * np.log10(levels)
    # the mouth's top k of 9 rows open with k linear in the loudness (dB): opening k/9, r = 1
    ks = np.round((db - db.min()) / (db.max() - db.min()) * 8).astype(int)
    y0 = g.mouth_box(64)[0]
    depth = [face_depth(1100.0, slice(y0, y0 + k)) if k else face_depth() for k in ks]
    frames = np.stack([uniform((200, 150, 120))] * len(levels))
    s = g.score_frames(frames, uniform((200, 150, 120)), depth=depth, wave=wave, detect=False)
    assert s.values["mouth_audio_r"] == pytest.approx(g.pearson(db, ks / 9))
    assert s.values["mouth_audio_r"] > 0.97
    assert s.values["flicker"] == 0 and s.values["colour_de"] == pytest.approx(0, abs=1e-9) and s.values["depth_face"] == 1.0
    reversed_ = g.score_frames(frames, frames[0], depth=depth[::-1], wave=wave, detect=False)
    assert reversed_.values["mouth_audio_r"] < s.values["mouth_audio_r"]


def test_psnr_ssim_sensitivity_by_hand():
    a = uniform((100, 100, 100))
    b = uniform((105, 105, 105))
    assert g.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / 25))
    assert g.psnr(a, a) == float("inf")
    assert g.ssim(a, a) == pytest.approx(1.0)
    c1 = (0.01 * 255) ** 2  # uniform images: only the luminance term is left
    assert g.ssim(b, a) == pytest.approx((2 * 100 * 105 + c1) / (100 ** 2 + 105 ** 2 + c1))
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, a.shape).astype(np.uint8)
    assert g.ssim(noisy, a) < 0.2
    half = np.zeros((2, 4, 4, 3), np.uint8)
    other = half.copy()
    other[:, :2] = 10  # half the pixels differ by 10
    assert g.reference_sensitivity(half, other) == pytest.approx(5.0)


def test_reconstruction_scores_depth_after_alignment():
    gt = [face_depth(1100.0), face_depth()]
    pred = [2 * d + 50 * (d > 0) for d in gt]  # an affine map of the ground truth: RMSE 0 after alignment
    frames = np.stack([uniform((90, 80, 70))] * 2)
    s = g.score_reconstruction(frames, frames, pred, gt)
    assert s.values["psnr"] == float("inf") and s.values["ssim"] == pytest.approx(1.0)
    assert s.values["depth_rmse"] == pytest.approx(0.0, abs=1e-6)


def test_face_found_on_a_real_crop_and_not_on_a_flat_one(astronaut):
    from rgbdface.data.face import crop_face

    crop = crop_face(astronaut, size=64).image
    assert g.face_found(crop)
    assert not g.face_found(uniform((128, 128, 128)))


def test_score_cli_samples_and_sensitivity(tmp_path, portrait_path):
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image

    crop = crop_face(load_image(portrait_path), size=64).image
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for i in range(2):
        save_image(a / f"astronaut_{i:02d}_rgb.png", crop)
        save_image(a / f"astronaut_{i:02d}_preview.png", np.zeros((64, 128, 3), np.uint8))  # not a sample: ignored
        save_image(b / f"astronaut_{i:02d}_rgb.png", np.clip(crop.astype(int) + 8, 0, 255).astype(np.uint8))
    r = runner.invoke(app, ["score", str(a), "-r", str(portrait_path), "--against", str(b), "--format", "json", "-q"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["samples"] == 2 and obj["face_found"] == 1.0
    assert obj["colour_de"] < 3  # the samples are the reference's own crop
    expected = np.abs(np.clip(crop.astype(int) + 8, 0, 255) - crop.astype(int)).mean()
    assert obj["reference_sensitivity"] == pytest.approx(expected, abs=1e-3)


def test_score_cli_talk_frames(tmp_path, portrait_path):
    frames, depth = tmp_path / "rgb", tmp_path / "depth"
    frames.mkdir(), depth.mkdir()
    for i, v in enumerate([100, 104, 100, 104]):
        save_image(frames / f"{i:06d}.png", uniform((v, v, v)))
        save_depth16(depth / f"{i:06d}.png", face_depth(1100.0 if i % 2 else None).astype(np.uint16))
    wav = tmp_path / "s.wav"
    from rgbdface.data.audio import write_wav

    write_wav(wav, np.concatenate([a * np.where(np.arange(640) % 2, 1.0, -1.0) for a in (0.05, 0.8, 0.05, 0.8)]).astype(np.float32))
    r = runner.invoke(app, ["score", str(frames), "-r", str(portrait_path), "--audio", str(wav), "--depth-frames", str(depth),
                            "--no-detect", "--format", "json", "-q"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["frames"] == 4 and obj["flicker"] == pytest.approx(4.0)
    assert obj["face_found"] is None and obj["depth_face"] == 1.0
    assert obj["mouth_audio_r"] == pytest.approx(1.0, abs=1e-3)  # loud frames are the open ones


def test_score_cli_errors(tmp_path, portrait_path):
    r = runner.invoke(app, ["score", str(tmp_path / "missing"), "-r", str(portrait_path)])
    assert r.exit_code == 1 and "no such file or folder" in r.stderr
    r = runner.invoke(app, ["score", str(tmp_path), "-r", str(portrait_path), "--kind", "video"])
    assert r.exit_code == 2 and "--kind" in r.stderr
    r = runner.invoke(app, ["score", str(tmp_path), "-r", str(portrait_path), "--kind", "samples", "--audio", str(portrait_path)])
    assert r.exit_code == 2
    r = runner.invoke(app, ["score", str(tmp_path), "-r", str(portrait_path)])
    assert r.exit_code == 1 and "no PNG or JPEG" in r.stderr


def test_ssim_agrees_with_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    for shape in [(64, 64, 3), (20, 33, 3), (11, 11, 3)]:
        a = rng.integers(0, 256, shape).astype(np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
        ref = structural_similarity(b, a, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert g.ssim(a, b) == pytest.approx(ref, abs=1e-9)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        g.ssim(a[:10, :10], b[:10, :10])
