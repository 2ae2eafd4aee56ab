"""The benchmark scripts still run against the current code (a few steps, tiny sizes, in this process)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from tests_helpers import load_script

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load_bench(name: str):
    return load_script(BENCH / f"bench_{name}.py")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bench_train_runs_each_stage(stage):
    """Its synthetic batches carry every key the objectives read, for all three stages."""
    bench = load_bench("train")
    row = bench.run_one(stage, "tiny", 32, steps=1)
    assert row["stage"] == stage and row["s_per_step"] > 0
    assert math.isfinite(row["loss"])
    assert 0 < row["trainable_m"] <= row["params_m"]


def test_bench_train_cached_pixels_compares_both_streams(tmp_path):
    from train_helpers import make_dataset

    bench = load_bench("train")
    text = bench.cached_pixels_ab(make_dataset(tmp_path / "d", identities=2, frames=2), steps=1, rounds=1)
    assert "every sample's pixels decoded |" in text and "pixels of cached samples skipped |" in text


def test_bench_single_pass_scores_portraits_and_video_frames(tmp_path):
    """Both paths on the shipped portraits (as shipped and mirrored) and on a short close-up video."""
    import cv2

    from rgbdface.data.io import load_image
    from rgbdface.data.video import VideoWriter

    face = cv2.resize(load_image(BENCH.parent / "examples" / "obama.jpg"), None, fx=1.3, fy=1.3)[:360]
    with VideoWriter(tmp_path / "closeup.mp4", fps=25) as w:
        for f in range(4):
            frame = np.full((360, 640, 3), 128, np.uint8)
            frame[:, 20 + 4 * f : 20 + 4 * f + face.shape[1]] = face
            w.write(frame)
    text = load_bench("single_pass").measure(2, tmp_path / "closeup.mp4", "obama.jpg")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    assert rows["one pass, portraits: centre shift (face widths)"][0] == "8"  # 4 portraits, each as shipped and mirrored
    assert rows["one pass, video frames: side difference"][0] == "4"
    shift = float(rows["the detector itself (mirrored, 0.8x, 1.25x): centre shift"][-1].rstrip("% |"))
    assert 0 <= shift < 10
    assert float(rows["detection + crop + face mesh on the crop (prep-depth now)"][0].rstrip(" |")) > 0


def test_audio_effect_compares_the_lower_half_of_the_frames():
    from types import SimpleNamespace

    lower_face_change = load_script(BENCH / "measure_audio_effect.py").lower_face_change

    top = np.zeros((4, 4), np.float32)
    a = [SimpleNamespace(depth=top.copy()), SimpleNamespace(depth=top.copy())]
    b = [SimpleNamespace(depth=top.copy()), SimpleNamespace(depth=top.copy())]
    b[0].depth[:2] = 5.0  # upper half: not counted
    b[1].depth[2:, :2] = 1.0  # lower half: 4 of its 8 pixels differ by 1
    assert lower_face_change(a, b, "depth") == (0.0 + 0.5) / 2


def test_audio_effect_clip_scale_reads_a_rendered_clip(tmp_path):
    from rgbdface.data.io import save_depth16

    bench = load_script(BENCH / "measure_audio_effect.py")
    yy = np.arange(8, dtype=np.uint16)[:, None].repeat(8, 1)
    flat = 5000 + 10 * yy  # a face sloping away downwards (0.1 mm steps)
    moved = flat.copy()
    moved[6:, :] += 200  # the jaw region moves back
    for i, d in enumerate((flat, moved)):
        save_depth16(tmp_path / f"depth_{i:06d}.png", d.astype(np.uint16))
    change = bench.clip_change(tmp_path)
    assert change > 0
    same = tmp_path / "same"
    same.mkdir()
    for i in range(2):
        save_depth16(same / f"depth_{i:06d}.png", moved.astype(np.uint16))
    assert bench.clip_change(same) == 0.0


def test_colour_match_moves_images_by_one_offset_to_the_reference_mean():
    from rgbdface.data.colour import srgb_to_lab

    shifted = load_script(BENCH / "measure_colour_match.py").shifted
    rng = np.random.default_rng(0)
    frames = (100 + rng.integers(-15, 16, (3, 8, 8, 3))).astype(np.uint8)  # mid-tones: nothing clips
    ref = np.broadcast_to(np.array([160, 110, 90], np.uint8), (8, 8, 3))
    out = shifted(frames, ref, frames[:1])  # the offset of the first frame, for all
    offset = srgb_to_lab(ref[0, 0]) - srgb_to_lab(frames[0]).reshape(-1, 3).mean(0)
    assert np.abs(srgb_to_lab(out) - srgb_to_lab(frames) - offset).max() < 1.0  # every pixel, every frame: one offset
    assert np.abs(srgb_to_lab(out[0]).reshape(-1, 3).mean(0) - srgb_to_lab(ref[0, 0])).max() < 0.3


def test_depth_regions_split_the_mask_and_sign_the_nearest_point_shift():
    bench = load_script(BENCH / "measure_depth_regions.py")
    valid = np.zeros((20, 20), bool)
    valid[2:18, 4:16] = True
    upper, lower = bench.split_rows(valid)
    assert not (upper & lower).any() and ((upper | lower) == valid).all()
    assert np.nonzero(upper.any(1))[0].max() < np.nonzero(lower.any(1))[0].min()  # upper rows lie above lower rows
    yy, xx = np.mgrid[:20, :20]
    gt = 1000.0 + 10 * np.hypot(yy - 8, xx - 10)  # a cone, nearest at row 8
    same = bench.region_scores(gt, gt, valid, 0.1)
    assert same["all"] == pytest.approx(0, abs=1e-9) and same["upper"] == pytest.approx(0, abs=1e-9)
    assert tuple(same["shift"]) == pytest.approx((0, 0))
    lower_nose = 1000.0 + 10 * np.hypot(yy - 11, xx - 10)  # the estimate's nearest point 3 rows lower
    moved = bench.region_scores(lower_nose, gt, valid, 0.1)
    assert moved["shift"][0] > 2 and abs(moved["shift"][1]) < 0.5 and moved["all"] > 0
