"""`rgbdface eval --data DATASET --method ...`: Table-1-style comparisons on a prep-depth dataset."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.manifest import load_manifest
from rgbdface.pipelines.depth_methods import mean_face_template, parse_method
from rgbdface.utils import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def two_people(tmp_path_factory, examples_dir):
    """A prep-depth dataset (64 px) of two identities, astronaut and biden, with 2 studio renders each."""
    from rgbdface.data.prep import PrepConfig, prepare_dataset

    root = tmp_path_factory.mktemp("data") / "two"
    summary = prepare_dataset([examples_dir / "astronaut.jpg", examples_dir / "biden.jpg"], root, PrepConfig(size=64, studio_views=2))
    assert not summary.failed
    return root


def test_baselines_on_studio_renders(two_people):
    r = runner.invoke(app, ["eval", "--data", str(two_people), "--method", "mesh", "--method", "plane", "--method", "mean-face",
                            "--method", f"mean-face:{two_people}", "--format", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == {"mesh", "plane", "mean-face", f"mean-face:{two_people.name}"}
    for v in res.values():
        assert v["n_images"] == 4  # the two studio renders of each
    # A constant plane aligns to the mean depth: it cannot beat a fitted face mesh.
    assert res["mesh"]["abs_rel"] < res["plane"]["abs_rel"]
    assert res["mesh"]["delta1"] >= res["plane"]["delta1"]
    # The mean face of the other identity is a real face shape: better than a plane.
    assert res["mean-face"]["rmse"] < res["plane"]["rmse"]
    assert res[f"mean-face:{two_people.name}"]["rmse"] < res["plane"]["rmse"]


def test_mean_face_never_includes_the_scored_identity(two_people):
    from rgbdface.data.io import load_image
    from rgbdface.pipelines.depth_methods import build_methods

    samples = load_manifest(two_people)
    (method,) = build_methods([f"mean-face:{two_people}"], samples)  # from a "training" dataset holding both
    astronaut = next(s for s in samples if s.identity == "astronaut")
    others = [s for s in samples if s.identity != "astronaut"]
    got = method.predict(astronaut, load_image(astronaut.rgb))
    np.testing.assert_allclose(got, 1.0 + mean_face_template(others, 64))
    assert not np.allclose(got, 1.0 + mean_face_template(samples, 64))


def test_identity_selects_the_samples_scored(two_people, tmp_path):
    r = runner.invoke(app, ["eval", "--data", str(two_people), "--method", "plane", "--identity", "biden", "--format", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n_images"] == 2 and all(row["name"].startswith("biden") for row in res["images"])
    r = runner.invoke(app, ["eval", "--data", str(two_people), "--method", "plane", "--identity", "obama"])
    assert r.exit_code == 1 and "--identity obama" in r.stderr and "astronaut, biden" in r.stderr
    r = runner.invoke(app, ["eval", "--identity", "biden", "--pred", str(tmp_path), "--gt", str(tmp_path)])
    assert r.exit_code == 2 and "--identity needs --data" in r.stderr


def test_mean_face_template_is_a_normalised_face(portrait_dataset):
    samples = load_manifest(portrait_dataset)
    t = mean_face_template(samples, 64)
    assert t.shape == (64, 64) and np.isfinite(t).all() and 0 <= t.min() and t.max() <= 1
    # Nearer at the centre (nose) than at the face border: smaller normalised depth.
    assert t[32, 32] < t[32, 12]


def test_mean_face_needs_another_identity(portrait_dataset):
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--method", "mean-face", "-q"])
    assert r.exit_code == 1 and "another identity" in r.stderr
    # a training dataset of the same single identity has no other identity either
    r = runner.invoke(app, ["eval", "--data", str(portrait_dataset), "--method", f"mean-face:{portrait_dataset}", "-q"])
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
