"""`rgbdface eval --data DATASET --method ...`: Table-1-style comparisons on a prep-depth dataset."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.manifest import load_manifest
from rgbdface.metrics.methods import mean_face_template, parse_method
from rgbdface.utils import InputError

runner = CliRunner()


def test_baselines_on_studio_renders(portrait_dataset):
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "mesh", "--method", "plane",
                            "--method", f"mean-face:{portrait_dataset}", "--format", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"mesh", "plane", f"mean-face:{portrait_dataset.name}"}
    for v in res.values():
        assert v["n_images"] == 2  # the two studio renders
    # A constant plane aligns to the mean depth: it cannot beat a fitted face mesh.
    assert res["mesh"]["abs_rel"] < res["plane"]["abs_rel"]
    assert res["mesh"]["delta1"] >= res["plane"]["delta1"]
    # The mean face of the same renders is a real face shape: better than a plane.
    assert res[f"mean-face:{portrait_dataset.name}"]["rmse"] < res["plane"]["rmse"]


def test_mean_face_template_is_a_normalised_face(portrait_dataset):
    samples = load_manifest(portrait_dataset)
    t = mean_face_template(samples, 64)
    assert t.shape == (64, 64) and np.isfinite(t).all() and 0 <= t.min() and t.max() <= 1
    # Nearer at the centre (nose) than at the face border: smaller normalised depth.
    assert t[32, 32] < t[32, 12]


def test_mean_face_needs_another_identity(portrait_dataset):
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "mean-face", "-q"])
    assert r.exit_code == 1 and "another identity" in r.stderr


def test_compare_errors(portrait_dataset, tmp_path):
    with pytest.raises(InputError):
        parse_method("oracle")
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "oracle"])
    assert r.exit_code == 2 and "unknown method" in r.stderr
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--pred", str(tmp_path)])
    assert r.exit_code == 2
    r = runner.invoke(app, ["eval", "--method", "mesh", "--pred", str(tmp_path), "--gt", str(tmp_path)])
    assert r.exit_code == 2
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "plane", "--source", "nope"])
    assert r.exit_code == 2
