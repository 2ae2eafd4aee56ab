"""`rgbdface eval`: units of RMSE, pairing estimate-depth outputs with a prep-depth dataset, and
files that cannot be scored (unreadable, colour, constant) failing or being skipped one by one."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.io import load_depth, load_image, save_depth16, save_image
from rgbdface.data.manifest import load_manifest
from tests_helpers import gt_map


def run(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def metrics(result):
    return json.loads(result.stdout)


@pytest.fixture
def noisy_folders(tmp_path):
    """Predictions with a known error (noise of 20 steps) so that RMSE is far from 0."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    rng = np.random.default_rng(5)
    for i, name in enumerate(["a", "b"]):
        g = gt_map(i)
        save_depth16(gt / f"{name}.png", g)
        p = np.where(g > 0, g + rng.normal(0, 20, g.shape), 0).clip(0, 65535).astype(np.uint16)
        save_depth16(pred / f"{name}.png", p)
    return pred, gt


def test_units_named_and_mm_is_a_tenth_of_prep_depth_steps(noisy_folders):
    pred, gt = noisy_folders
    raw = run("--pred", pred, "--gt", gt, "--format", "json")
    mm = run("--pred", pred, "--gt", gt, "--format", "json", "--units", "mm")
    assert raw.exit_code == 0 and mm.exit_code == 0, raw.output + mm.output
    assert metrics(raw)["rmse_units"] == "gt" and metrics(mm)["rmse_units"] == "mm"
    assert metrics(raw)["rmse"] > 5
    assert metrics(mm)["rmse"] == pytest.approx(metrics(raw)["rmse"] * 0.1, rel=1e-6)
    assert metrics(mm)["abs_rel"] == pytest.approx(metrics(raw)["abs_rel"], rel=1e-6)
    table = run("--pred", pred, "--gt", gt, "--units", "mm")
    assert "RMSE ↓ (mm)" in table.stdout and "RMSE in mm" in table.stdout
    assert "RMSE in gt units" in run("--pred", pred, "--gt", gt).stdout
    csv_out = run("--pred", pred, "--gt", gt, "--format", "csv", "--units", "mm").stdout.splitlines()
    assert "rmse_units" in csv_out[0].split(",") and all(",mm," in line for line in csv_out[1:3])
    bad = run("--pred", pred, "--gt", gt, "--units", "cm")
    assert bad.exit_code == 2 and "--units 'cm'" in bad.output


def test_constant_ground_truth_is_skipped_with_a_warning_and_a_count(noisy_folders):
    pred, gt = noisy_folders
    flat = np.full((24, 20), 5000, np.uint16)
    save_depth16(gt / "flat.png", flat)
    save_depth16(pred / "flat.png", gt_map(9))
    both = run("--pred", pred, "--gt", gt, "--format", "json")
    assert both.exit_code == 0, both.output
    m = metrics(both)
    assert m["n_images"] == 2 and m["n_degenerate"] == 1 and m["degenerate"] == ["flat"]
    assert "1 ground-truth maps are constant" in both.stderr and "flat" in both.stderr
    # the mean is that of the two real images: the constant one (a "perfect" 0) is not averaged in
    (gt / "flat.png").unlink(), (pred / "flat.png").unlink()
    assert metrics(run("--pred", pred, "--gt", gt, "--format", "json"))["rmse"] == pytest.approx(m["rmse"])


def test_unreadable_and_colour_files_fail_alone(noisy_folders, tmp_path):
    pred, gt = noisy_folders
    save_depth16(gt / "c.png", gt_map(3))
    np.save(pred / "c.npy", np.array([["x", "y"]]))  # strings, not depth
    save_image(gt / "d.png", np.dstack([gt_map(4).astype(np.uint8)] * 3))  # an RGB PNG as ground truth
    save_depth16(pred / "d.png", gt_map(4))
    r = run("--pred", pred, "--gt", gt, "--format", "json")
    assert r.exit_code == 1
    m = metrics(r)
    assert m["n_images"] == 2
    errors = {f["name"]: f["error"] for f in m["failed"]}
    assert set(errors) == {"c", "d"}
    assert "not depth" in errors["c"] and "colour image, not a depth map" in errors["d"]
    assert "Traceback" not in r.output
    for name in ("c", "d"):
        assert sum(line.startswith(f"rgbdface: error: {name}:") for line in r.stderr.splitlines()) == 1


def _full_frame_prediction(sample, image_shape, warp=None):
    """What estimate-depth writes for the input of `sample`: a full-frame map, here the dataset's own
    depth pasted back (optionally changed by `warp`), 0 outside the crop."""
    from rgbdface.data.face import FaceCrop, paste_back

    depth = load_depth(sample.depth)
    if warp is not None:
        depth = warp(depth)
    crop = FaceCrop(image=np.zeros((sample.size, sample.size, 3), np.uint8), box=sample.box, source_size=image_shape)
    return paste_back(depth, crop, fill=0, interpolation="nearest").astype(np.uint16)


def test_pred_folder_pairs_with_a_dataset_by_input_name(portrait_dataset, portrait_path, tmp_path):
    wild = [s for s in load_manifest(portrait_dataset) if s.source == "wild"]
    assert len(wild) == 1 and wild[0].box is not None
    shape = load_image(portrait_path).shape[:2]
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    save_depth16(good / f"{portrait_path.stem}.png", _full_frame_prediction(wild[0], shape))
    save_image(good / f"{portrait_path.stem}_preview.png", np.zeros((8, 8, 3), np.uint8))  # --preview's picture: ignored
    save_depth16(bad / f"{portrait_path.stem}.png",
                 _full_frame_prediction(wild[0], shape, lambda d: np.where(d > 0, d[::-1], 0).astype(np.float32)))
    r = run("--pred", good, "--gt", portrait_dataset, "--format", "json")
    assert r.exit_code == 0, r.output
    m = metrics(r)
    assert m["n_images"] == 1 and m["rmse_units"] == "mm" and m["unmatched"] == []
    assert m["images"][0]["name"] == portrait_path.stem
    assert m["rmse"] < 0.5  # its own ground truth, cropped back out of the full frame (mm)
    assert "no ground truth" not in r.stderr
    worse = metrics(run("--pred", bad, "--gt", portrait_dataset, "--format", "json"))
    assert worse["rmse"] > 10 * max(m["rmse"], 0.05)
    # a folder without the input's prediction: named, exit 1
    empty = tmp_path / "empty"
    empty.mkdir()
    save_depth16(empty / "other.png", gt_map(0))
    miss = run("--pred", empty, "--gt", portrait_dataset)
    assert miss.exit_code == 1 and f"no prediction {portrait_path.stem}.png" in miss.stderr
    assert "--mask goes with --gt DIR" in run("--pred", good, "--gt", portrait_dataset, "--mask", good).output


@pytest.mark.slow
def test_estimate_depth_output_pairs_with_its_dataset(portrait_dataset, portrait_path, tmp_path):
    """The real chain: estimate-depth (bundled model) on the dataset's input, then eval against the dataset."""
    out = tmp_path / "depth"
    r = CliRunner().invoke(app, ["estimate-depth", str(portrait_path), "-o", str(out), "--preview", "-q"])
    assert r.exit_code == 0, r.output
    e = run("--pred", out, "--gt", portrait_dataset, "--format", "json")
    assert e.exit_code == 0, e.output
    m = metrics(e)
    assert m["n_images"] == 1 and m["unmatched"] == [] and m["rmse_units"] == "mm"
    assert 0 < m["rmse"] < 40  # a face-shaped relative depth: a few mm to a few cm off after alignment
