"""The depth protocol's functions against hand-computed values, invariances and masking."""

import numpy as np
import pytest

from rgbdface.metrics.depth import (
    EPS,
    abs_rel,
    align_least_squares,
    delta,
    error_map,
    evaluate_pair,
    evaluate_samples,
    fit_scale_shift,
    nearest_centroid,
    nearest_offset,
    rmse,
    valid_mask,
)


def random_gt(seed=0, shape=(12, 10), lo=2.0, hi=5.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


# --------------------------------------------------------------------------- hand-computed values


def test_metrics_hand_computed():
    # ratios max(p/g, g/p) = 2, 1, 1.5, 1.25 (1.25 is not below 1.25: thresholds are strict)
    pred = np.array([1.0, 2.0, 3.0, 2.5])
    gt = np.array([2.0, 2.0, 2.0, 2.0])
    assert abs_rel(pred, gt) == pytest.approx((0.5 + 0 + 0.5 + 0.25) / 4)
    assert delta(pred, gt, k=1) == pytest.approx(1 / 4)
    assert delta(pred, gt, k=2) == pytest.approx(3 / 4)  # 1.25² = 1.5625
    assert delta(pred, gt, k=3) == pytest.approx(3 / 4)  # 1.25³ ≈ 1.95 < 2
    assert rmse(pred, gt) == pytest.approx(np.sqrt((1 + 0 + 1 + 0.25) / 4))


def test_metrics_use_only_valid_pixels():
    pred = np.array([1.0, 2.0, 100.0])
    gt = np.array([2.0, 2.0, 1.0])
    valid = np.array([True, True, False])
    assert abs_rel(pred, gt, valid) == pytest.approx(0.25)
    assert rmse(pred, gt, valid) == pytest.approx(np.sqrt(0.5))
    assert delta(pred, gt, valid) == pytest.approx(0.5)
    # the default valid region is gt > 0
    assert abs_rel(np.array([1.0, 5.0]), np.array([2.0, 0.0])) == pytest.approx(0.5)


def test_fit_scale_shift_hand_computed():
    assert fit_scale_shift([0, 1, 2], [1, 3, 5]) == pytest.approx((2.0, 1.0))
    # not exact: x = [0, 1, 2], y = [0, 2, 1] → scale = cov/var = 1/2, shift = 1 - 1/2
    assert fit_scale_shift([0, 1, 2], [0, 2, 1]) == pytest.approx((0.5, 0.5))
    # a constant prediction has no scale: the best fit is the mean
    assert fit_scale_shift([3, 3, 3], [1, 2, 6]) == pytest.approx((0.0, 3.0))


def test_align_depth_and_disparity_hand_computed():
    gt = np.array([[1.0, 2.0, 4.0]])
    valid = np.ones_like(gt, bool)
    aligned, scale, shift = align_least_squares(np.array([[0.0, 0.5, 1.5]]), gt, valid, space="depth")
    assert (scale, shift) == pytest.approx((2.0, 1.0))
    np.testing.assert_allclose(aligned, gt)
    # disparity space: the prediction is 4 × 1/gt
    aligned, scale, shift = align_least_squares(np.array([[4.0, 2.0, 1.0]]), gt, valid, space="disparity")
    assert (scale, shift) == pytest.approx((0.25, 0.0), abs=1e-12)
    np.testing.assert_allclose(aligned, gt)


def test_alignment_uses_valid_pixels_only_and_clips():
    gt = np.array([1.0, 2.0, 3.0, 0.0])
    pred = np.array([1.0, 2.0, 3.0, -100.0])
    valid = np.array([True, True, True, False])
    aligned, scale, shift = align_least_squares(pred, gt, valid)
    assert (scale, shift) == pytest.approx((1.0, 0.0))
    assert aligned[3] == EPS  # -100 after alignment, clipped to 1e-6
    assert aligned.min() >= EPS


def test_depth_space_alignment_is_least_squares():
    """No other scale/shift gives a smaller squared error than the fitted one."""
    gt = random_gt(1)
    pred = np.random.default_rng(2).uniform(0, 1, gt.shape)
    valid = np.ones_like(gt, bool)
    aligned, scale, shift = align_least_squares(pred, gt, valid)
    best = np.sum((aligned - gt) ** 2)
    for ds, dt in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)]:
        assert np.sum(((scale + ds) * pred + shift + dt - gt) ** 2) > best


# --------------------------------------------------------------------------- invariance


@pytest.mark.parametrize("a,b", [(3.0, 2.0), (0.01, -0.015), (-2.0, 40.0), (1e4, 1.0)])
def test_affine_prediction_scores_perfectly(a, b):
    gt = random_gt(3)
    pred = a * gt + b  # all positive for these (a, b) since gt is in [2, 5]; a < 0 flips the order
    assert (pred > 0).all()
    m = evaluate_pair(pred, gt)
    assert m["abs_rel"] == pytest.approx(0, abs=1e-9)
    assert m["delta1"] == 1.0 and m["delta2"] == 1.0 and m["delta3"] == 1.0
    assert m["rmse"] == pytest.approx(0, abs=1e-9)
    assert m["n_valid"] == gt.size
    assert m["scale"] == pytest.approx(1 / a)


@pytest.mark.parametrize("a,b", [(2.0, 0.5), (300.0, 7.0), (-1.0, 1.0)])
def test_affine_disparity_prediction_scores_perfectly(a, b):
    gt = random_gt(4)
    pred = a / gt + b  # affine in disparity; all positive for these (a, b) since gt in [2, 5]
    m = evaluate_pair(pred, gt, alignment="least_square_disparity")
    assert m["abs_rel"] == pytest.approx(0, abs=1e-9)
    assert m["delta1"] == 1.0
    assert m["rmse"] == pytest.approx(0, abs=1e-9)
    # the same prediction is not affine in depth, so depth-space alignment is not perfect
    assert evaluate_pair(pred, gt, alignment="least_square")["rmse"] > 1e-3


def test_imperfect_prediction_scores_worse():
    gt = random_gt(5)
    pred = gt + np.random.default_rng(6).normal(0, 0.5, gt.shape)
    m = evaluate_pair(np.clip(pred, 0.1, None), gt)
    assert 0 < m["abs_rel"] < 1 and 0 < m["delta1"] < 1 and m["rmse"] > 0
    assert m["delta1"] <= m["delta2"] <= m["delta3"]


# --------------------------------------------------------------------------- validity


def test_valid_mask_combines_gt_pred_and_mask():
    gt = np.array([[1.0, 0.0, 1.0, 1.0]])
    pred = np.array([[1.0, 1.0, 0.0, 1.0]])
    mask = np.array([[1, 1, 1, 0]])
    np.testing.assert_array_equal(valid_mask(pred, gt), [[True, False, False, True]])
    np.testing.assert_array_equal(valid_mask(pred, gt, mask), [[True, False, False, False]])


def test_masked_out_pixels_do_not_count():
    gt = random_gt(7)
    pred = 2 * gt + 1
    mask = np.ones_like(gt, bool)
    mask[:3] = False
    pred[:3] = np.random.default_rng(8).uniform(1, 100, pred[:3].shape)  # garbage outside the mask
    gt[3, :4] = 0  # invalid ground truth
    pred[3, :4] = 50.0
    assert evaluate_pair(pred, gt, mask)["rmse"] == pytest.approx(0, abs=1e-9)
    assert evaluate_pair(pred, gt, mask)["n_valid"] == gt.size - 3 * gt.shape[1] - 4
    assert evaluate_pair(pred, gt)["rmse"] > 0.1  # without the mask the garbage counts


def test_evaluate_pair_rejects_bad_pairs():
    with pytest.raises(ValueError, match="ground truth is"):
        evaluate_pair(np.ones((4, 5)), np.ones((4, 6)))
    with pytest.raises(ValueError, match="no valid pixels"):
        evaluate_pair(np.ones((4, 5)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="alignment"):
        evaluate_pair(np.ones((4, 5)), np.ones((4, 5)), alignment="median")


def test_metrics_are_averaged_over_images_not_pixels():
    g1, g2 = random_gt(9, (4, 4)), random_gt(10, (20, 20))
    p1 = g1 * np.random.default_rng(11).uniform(0.7, 1.3, g1.shape)
    p2 = g2 * np.random.default_rng(12).uniform(0.95, 1.05, g2.shape)
    m1, m2 = evaluate_pair(p1, g1), evaluate_pair(p2, g2)
    report = evaluate_samples([("a", lambda: (p1, g1, None)), ("b", lambda: (p2, g2, None))])
    s = report.summary()
    for k in ("abs_rel", "delta1", "rmse"):
        assert s[k] == pytest.approx((m1[k] + m2[k]) / 2)
    pooled = (m1["abs_rel"] * 16 + m2["abs_rel"] * 400) / 416
    assert abs(s["abs_rel"] - pooled) > 1e-3
    assert s["n_images"] == 2 and s["n_failed"] == 0


def test_failed_samples_are_kept_by_name():
    good = random_gt(13)
    report = evaluate_samples([
        ("ok", lambda: (good, good, None)),
        ("size", lambda: (good, good[:-1], None)),
        ("empty", lambda: (good, np.zeros_like(good), None)),
    ])
    assert [r["name"] for r in report.images] == ["ok"]
    assert {f["name"] for f in report.failed} == {"size", "empty"}
    assert report.summary()["n_failed"] == 2


# --------------------------------------------------------------------------- error maps


def nose_map(tip=(9, 12), shape=(20, 25)):
    """A face-like depth: 700 at the nose tip, farther with the distance from it (one unique minimum)."""
    rows, cols = np.indices(shape)
    return 700.0 + np.hypot(rows - tip[0], cols - tip[1])


def test_nearest_offset_is_zero_for_the_ground_truth():
    gt = nose_map()
    # 2 % of 500 pixels = 10; the 13 pixels within 2 px of the tip are taken (ties), centred on it
    assert nearest_centroid(gt, gt > 0) == pytest.approx([9, 12])
    assert evaluate_pair(gt, gt)["nearest_offset"] == 0.0
    assert evaluate_pair(3 * gt - 1000, gt)["nearest_offset"] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("tip,k", [((9, 15), 3), ((9, 5), 7), ((3, 12), 6)])
def test_nearest_offset_of_a_shifted_nose_is_the_shift_over_the_width(tip, k):
    gt = nose_map()  # 20 rows, 25 columns: the offset is over the width, 25, also for a shift upwards
    m = evaluate_pair(nose_map(tip), gt)
    assert m["scale"] > 0
    assert m["nearest_offset"] == pytest.approx(100 * k / 25)


def test_nearest_offset_counts_a_prediction_turned_around_by_the_fit():
    gt = nose_map(tip=(6, 8))
    # a pure inversion is undone by the affine fit (scale -1), like every measure of the protocol
    far = evaluate_pair(2000.0 - gt, gt)
    assert far["scale"] == pytest.approx(-1) and far["nearest_offset"] == pytest.approx(0, abs=1e-9)
    # nearest at the nose tip, but otherwise a slope that is near where gt is far (bottom right): the
    # fit turns it around (negative scale), and the aligned map is nearest at the top left corner
    rows, cols = np.indices(gt.shape)
    pred = 1300.0 - (rows + cols)  # 1257 .. 1300
    pred[gt <= 702] = 1250.0  # the 13 pixels within 2 px of the tip stick out
    assert nearest_offset(pred, gt) == 0.0  # the raw prediction would look perfect
    m = evaluate_pair(pred, gt)
    assert m["scale"] < 0
    # aligned, its nearest 2 % are the 10 pixels with rows + cols <= 3, centred on (1, 1)
    assert m["nearest_offset"] == pytest.approx(100 * np.hypot(6 - 1, 8 - 1) / 25)


def test_nearest_offset_of_a_flat_prediction_is_from_the_centre_of_the_valid_pixels():
    gt = nose_map()
    valid = np.zeros(gt.shape, bool)
    valid[5:15, 4:24] = True  # centroid (9.5, 13.5); the tip (9, 12) is inside
    m = evaluate_pair(np.full(gt.shape, 3.0), gt, mask=valid)
    assert m["scale"] == 0.0  # all its pixels tie: the nearest 2 % are all of them
    assert m["nearest_offset"] == pytest.approx(100 * np.hypot(0.5, 1.5) / 25)


def test_nearest_offset_is_averaged_over_images():
    gt = nose_map()
    report = evaluate_samples([("a", lambda: (gt, gt, None)), ("b", lambda: (nose_map((9, 17)), gt, None))])
    assert [r["nearest_offset"] for r in report.images] == pytest.approx([0, 20])
    assert report.summary()["nearest_offset"] == pytest.approx(10)
    assert report.to_dict()["nearest_offset"] == pytest.approx(10)


def test_error_map_colours():
    gt = np.array([[1.0, 2.0, 3.0, 11.0, 5.0]])  # depth range 10
    valid = np.array([[True, True, True, True, False]])
    aligned = gt + np.array([[0.0, 1.0, -0.5, 5.0, 0.0]])  # 0, +0.1, -0.05, +0.5 (clipped) of the range
    rgb = error_map(aligned, gt, valid)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])  # no error: white
    np.testing.assert_array_equal(rgb[0, 1], [255, 0, 0])  # +0.1 of the range: full red (too far)
    np.testing.assert_array_equal(rgb[0, 2], [128, 128, 255])  # -0.05: half blue (too near)
    np.testing.assert_array_equal(rgb[0, 3], [255, 0, 0])  # beyond the range: clipped
    np.testing.assert_array_equal(rgb[0, 4], [0, 0, 0])  # not evaluated: black
