"""`rgbdface eval` on small folders written here."""

import csv
import io
import json

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.io import save_depth16, save_npy
from rgbdface.metrics.depth import evaluate_pair
from tests_helpers import gt_map

# Depth files are read as float32, so "exact" predictions score within float32 rounding:
# an RMSE below 1e-3 in units of 0.1 mm on depths around 5000.
KEYS = {"abs_rel", "delta1", "delta2", "delta3", "rmse", "nearest_offset", "n_images"}


def run(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def folders(tmp_path):
    """Three exact affine predictions (PNG and .npy) of three ground truths."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        g = gt_map(i)
        save_depth16(gt / f"{name}.png", g)
        p = (2 * g.astype(np.int64) - 9000).clip(0, None)  # exact in 16 bits; 0 where gt is 0
        if name == "c":
            save_npy(pred / f"{name}.npy", p.astype(np.float32) / 1000.0)
        else:
            save_depth16(pred / f"{name}.png", p.astype(np.uint16))
    return pred, gt


def test_table(folders):
    pred, gt = folders
    r = run("--pred", pred, "--gt", gt)
    assert r.exit_code == 0, r.output
    assert "AbsRel" in r.stdout and "RMSE" in r.stdout and "δ1" in r.stdout
    row = next(line for line in r.stdout.splitlines() if "pred" in line and "│" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:3] == ["pred", "3", "0"]
    assert float(cells[3]) == 0.0 and float(cells[4]) == 1.0  # AbsRel 0, δ1 1
    assert "error" not in r.stderr


def test_json(folders):
    pred, gt = folders
    r = run("--pred", pred, "--gt", gt, "--format", "json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert KEYS <= obj.keys()
    assert obj["n_images"] == 3 and obj["failed"] == []
    assert obj["abs_rel"] == pytest.approx(0, abs=1e-9)
    assert obj["delta1"] == 1.0 and obj["rmse"] == pytest.approx(0, abs=1e-3)
    assert [row["name"] for row in obj["images"]] == ["a", "b", "c"]
    assert all({"abs_rel", "delta1", "rmse", "n_valid"} <= row.keys() for row in obj["images"])
    assert obj["images"][0]["n_valid"] == 23 * 19


def test_json_matches_library_on_imperfect_predictions(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    rng = np.random.default_rng(0)
    expected = []
    for seed, name in enumerate(["x", "y"]):
        g = gt_map(seed)
        p = (g.astype(np.float64) + rng.normal(0, 80, g.shape)).clip(1, None) * (g > 0)
        save_depth16(gt / f"{name}.png", g)
        save_npy(pred / f"{name}.npy", p)
        expected.append(evaluate_pair(p, g.astype(np.float64)))
    obj = json.loads(run("--pred", pred, "--gt", gt, "-f", "json").stdout)
    for key in ("abs_rel", "delta1", "delta2", "delta3", "rmse"):
        assert obj[key] == pytest.approx(np.mean([e[key] for e in expected]))
    assert obj["rmse"] > 1 and obj["abs_rel"] > 1e-3


def test_csv(folders):
    pred, gt = folders
    r = run("--pred", pred, "--gt", gt, "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["name"] for row in rows] == ["a", "b", "c", "mean"]
    assert {"abs_rel", "delta1", "delta2", "delta3", "rmse"} <= rows[0].keys()
    assert float(rows[-1]["delta1"]) == 1.0 and float(rows[-1]["abs_rel"]) < 1e-9


def test_nearest_offset_in_every_format(tmp_path):
    """A nose 3 px right of the true one, over a width of 25 px: 12 % in the table, JSON and CSV."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    rows, cols = np.indices((20, 25))
    save_npy(gt / "face.npy", 5000 + 10 * np.hypot(rows - 9, cols - 12))
    save_npy(pred / "face.npy", 5000 + 10 * np.hypot(rows - 9, cols - 15))
    obj = json.loads(run("--pred", pred, "--gt", gt, "--format", "json").stdout)
    assert obj["nearest_offset"] == pytest.approx(12) and obj["images"][0]["nearest_offset"] == pytest.approx(12)
    table = run("--pred", pred, "--gt", gt, "--units", "gt").stdout
    assert "nearest ↓ (% width)" in table
    row = next(line for line in table.splitlines() if line.lstrip("│ ").startswith("pred"))
    assert [c.strip() for c in row.split("│") if c.strip()][-1] == "12.00"
    r = run("--pred", pred, "--gt", gt, "--format", "csv")
    assert r.exit_code == 0, r.output
    lines = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["name"], float(x["nearest_offset"])) for x in lines] == [("face", pytest.approx(12)), ("mean", pytest.approx(12))]


def test_disparity_alignment(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    g = gt_map(5)
    save_depth16(gt / "a.png", g)
    gf = g.astype(np.float64)
    save_npy(pred / "a.npy", np.where(g > 0, 3000.0 / np.where(g > 0, gf, 1) + 0.2, 0))
    obj = json.loads(run("--pred", pred, "--gt", gt, "-f", "json", "--alignment", "least_square_disparity").stdout)
    assert obj["alignment"] == "least_square_disparity"
    assert obj["rmse"] == pytest.approx(0, abs=1e-3) and obj["delta1"] == 1.0


def test_mask_folder(folders, tmp_path):
    pred, gt = folders
    masks = tmp_path / "mask"
    # spoil the top half of every prediction; masks keep only the bottom half
    for name in ["a", "b"]:
        p = iio.imread(pred / f"{name}.png")
        p[:12] = 60000 * (p[:12] > 0)
        save_depth16(pred / f"{name}.png", p)
    p = np.load(pred / "c.npy")
    p[:12] = 60.0 * (p[:12] > 0)
    save_npy(pred / "c.npy", p)
    for name in ["a", "b", "c"]:
        m = np.zeros((24, 20), np.uint8)
        m[12:] = 255
        masks.mkdir(exist_ok=True)
        iio.imwrite(masks / f"{name}.png", m)
    spoiled = json.loads(run("--pred", pred, "--gt", gt, "-f", "json").stdout)
    masked = json.loads(run("--pred", pred, "--gt", gt, "--mask", masks, "-f", "json").stdout)
    assert spoiled["rmse"] > 10
    assert masked["rmse"] == pytest.approx(0, abs=1e-3)
    assert masked["images"][0]["n_valid"] == 12 * 19


def test_error_maps(folders, tmp_path):
    pred, gt = folders
    maps = tmp_path / "maps"
    r = run("--pred", pred, "--gt", gt, "--error-maps", maps, "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in maps.iterdir()) == ["a.png", "b.png", "c.png"]
    img = iio.imread(maps / "a.png")
    assert img.shape == (24, 20, 3) and img.dtype == np.uint8
    assert (img[1:, 1:] == 255).all()  # perfect prediction: white over the valid pixels
    assert (img[0] == 0).all() and (img[:, 0] == 0).all()  # invalid: black


def test_problems_are_reported_by_name(folders):
    pred, gt = folders
    save_depth16(gt / "nopred.png", gt_map(7))  # ground truth without a prediction
    save_depth16(pred / "nogt.png", gt_map(8))  # prediction without ground truth
    save_depth16(gt / "size.png", gt_map(9))
    save_depth16(pred / "size.png", gt_map(9, (10, 10)))  # another size
    save_depth16(gt / "empty.png", np.zeros((24, 20), np.uint16))  # no valid pixel
    save_depth16(pred / "empty.png", gt_map(10))
    r = run("--pred", pred, "--gt", gt, "-f", "json")
    assert r.exit_code == 1
    obj = json.loads(r.stdout)  # stdout still holds the results of what could be scored
    assert obj["n_images"] == 3 and obj["n_failed"] == 3
    assert {f["name"] for f in obj["failed"]} == {"nopred", "size", "empty"}
    assert obj["unmatched"] == ["nogt"]
    for name in ["nopred", "size", "empty", "nogt"]:
        assert name in r.stderr
    assert "10x10" in r.stderr and "20x24" in r.stderr


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["--format", "xml"], 2, "--format"),
        (["--alignment", "median"], 2, "--alignment"),
        (["--gt", None], 2, "--pred"),
    ],
)
def test_usage_errors_are_one_line(folders, args, code, words):
    pred, gt = folders
    full = ["--pred", pred, "--gt", gt] if None not in args else []
    full += [a if a is not None else gt for a in args]
    r = run(*full)
    assert r.exit_code == code
    assert words in one_line(r.stderr)
    assert r.stdout == ""


def test_missing_folder_is_one_line(folders, tmp_path):
    pred, _ = folders
    r = run("--pred", pred, "--gt", tmp_path / "nowhere")
    assert r.exit_code == 1
    assert "nowhere" in one_line(r.stderr)


def test_nothing_to_score(tmp_path):
    (tmp_path / "p").mkdir(), (tmp_path / "g").mkdir()
    r = run("--pred", tmp_path / "p", "--gt", tmp_path / "g", "-f", "json")
    assert r.exit_code == 1
    assert "no image" in r.stderr
