"""The face-crop framing travels end to end: prep-depth → dataset.json → trained model → every crop of its inputs."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.face import DEFAULT_MARGIN, detect_faces, square_box
from rgbdface.data.manifest import CropSpec, load_manifest, read_crop, write_info
from rgbdface.models.folder import model_crop_margin
from rgbdface.utils import UsageError
from train_helpers import make_dataset

runner = CliRunner()
TIGHT = 0.3  # tighter than the default 0.6
QUIET = ["--max-steps", "1", "--set", "log.sample_every=0", "--set", "log.checkpoint_every=0", "-q"]


def width(box) -> float:
    return box[2] - box[0]


def error_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


@contextlib.contextmanager
def training_warnings():
    """The training loop's warnings (on stderr through logging; captured here)."""
    got: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: got.append(record.getMessage())
    logger = logging.getLogger("rgbdface.training")
    logger.addHandler(handler)
    try:
        yield got
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def tight_dataset(tmp_path_factory, portrait_path):
    """A real prep-depth dataset of 64 px crops with margin 0.3: the astronaut and one studio render."""
    root = tmp_path_factory.mktemp("tight") / "data"
    r = runner.invoke(app, ["prep-depth", str(portrait_path), "-o", str(root), "--size", "64", "--margin", str(TIGHT),
                            "--studio-views", "1", "-q"])
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="module")
def tight_model(tight_dataset, tiny_model_dir, tmp_path_factory):
    """A stage-1 tiny model trained (one step) on the margin-0.3 dataset from a stage-0 model."""
    run = tmp_path_factory.mktemp("tight") / "run"
    with training_warnings() as warnings:
        r = runner.invoke(app, ["train", str(tight_dataset), "-o", str(run), "-m", str(tiny_model_dir), *QUIET])
    assert r.exit_code == 0, r.output
    assert not [w for w in warnings if "margin" in w]  # stage 0 learnt no framing: nothing to warn about
    return run / "model"


@pytest.fixture(scope="module")
def tight_masked_dir(tiny_masked_model, tmp_path_factory):
    """The tiny stage-2 model, recorded as trained on margin-0.3 crops."""
    m = tiny_masked_model.clone()
    m.meta.crop_margin = TIGHT
    return m.save_pretrained(tmp_path_factory.mktemp("tight") / "stage2")


# ----------------------------------------------------------------------------- datasets
def test_dataset_records_its_crop(tight_dataset, astronaut):
    info = json.loads((tight_dataset / "dataset.json").read_text())
    assert info["crop"] == {"size": 64, "margin": TIGHT}
    assert read_crop(tight_dataset) == CropSpec(64, TIGHT)
    wild = next(s for s in load_manifest(tight_dataset) if s.source == "wild")
    face = detect_faces(astronaut)[0]
    assert np.allclose(wild.box, square_box(face, TIGHT), atol=0.01)  # the crop was made with the margin asked for
    assert width(wild.box) < 0.8 * width(square_box(face))


def test_prep_depth_refuses_another_framing(tight_dataset, portrait_path):
    info = (tight_dataset / "dataset.json").read_text()
    files = sorted(p for p in tight_dataset.rglob("*"))
    for args in (["--size", "64"], ["--size", "128", "--margin", str(TIGHT)]):  # the default margin; another size
        r = runner.invoke(app, ["prep-depth", str(portrait_path), "-o", str(tight_dataset), *args, "--overwrite"])
        assert r.exit_code == 2, r.output  # the options conflict with the dataset: a usage error
        lines = error_lines(r)
        assert len(lines) == 1 and lines[0].startswith("rgbdface: error:") and "--size 64 --margin 0.3" in lines[0], r.stderr
    assert (tight_dataset / "dataset.json").read_text() == info and sorted(tight_dataset.rglob("*")) == files
    # the same framing goes on as usual (the input is done already: skipped)
    r = runner.invoke(app, ["prep-depth", str(portrait_path), "-o", str(tight_dataset), "--size", "64", "--margin", str(TIGHT),
                            "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped"] == [str(portrait_path)]


def test_an_older_dataset_has_the_default_margin(tmp_path):
    root = make_dataset(tmp_path / "old", identities=1, frames=1, size=32)  # dataset.json without a crop record
    assert read_crop(root) == CropSpec(32, DEFAULT_MARGIN)  # the size from its rows
    with pytest.raises(UsageError, match="--size 32 --margin 0.6"):
        write_info(root, CropSpec(32, TIGHT))
    write_info(root, CropSpec(32, DEFAULT_MARGIN))  # the same framing: the record is added, the rest kept
    info = json.loads((root / "dataset.json").read_text())
    assert info["crop"] == {"size": 32, "margin": DEFAULT_MARGIN} and info["format"] == "rgbdface-dataset"


# ----------------------------------------------------------------------------- models
def test_training_gives_the_model_the_dataset_margin(tight_model):
    meta = json.loads((tight_model / "rgbdface.json").read_text())
    assert meta["stages"] == [0, 1] and meta["crop_margin"] == TIGHT
    assert model_crop_margin(tight_model) == TIGHT


def test_a_new_stage_on_other_crops_warns_and_takes_its_margin(tight_model, tmp_path):
    data = make_dataset(tmp_path / "data", identities=2, frames=2)  # default margin
    run = tmp_path / "run"
    with training_warnings() as got:
        r = runner.invoke(app, ["finetune-mask", str(data), "-o", str(run), "-m", str(tight_model), *QUIET])
    assert r.exit_code == 0, r.output
    warnings = [w for w in got if "margin" in w]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "margin 0.3" in warnings[0] and "margin 0.6" in warnings[0]
    assert json.loads((run / "model" / "rgbdface.json").read_text())["crop_margin"] == DEFAULT_MARGIN


def test_a_model_without_the_record_loads_with_the_default(tiny_model_dir, tmp_path):
    from rgbdface.models.folder import BUNDLED_MODEL
    from rgbdface.models.model import load_model

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    meta = json.loads((old / "rgbdface.json").read_text())
    del meta["crop_margin"]
    (old / "rgbdface.json").write_text(json.dumps(meta))
    assert load_model(old).meta.crop_margin == DEFAULT_MARGIN
    assert model_crop_margin(old) == DEFAULT_MARGIN
    # the bundled model (no --model) resolves as load_model(None) does
    assert model_crop_margin(None) == json.loads((BUNDLED_MODEL / "rgbdface.json").read_text()).get("crop_margin", DEFAULT_MARGIN)


# ----------------------------------------------------------------------------- inference
def test_estimate_depth_crops_with_the_model_margin(tight_masked_dir, portrait_path, astronaut, tmp_path):
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.depth import estimate_depth, estimate_depths, prepare_depth_input

    out = tmp_path / "d.npy"
    r = runner.invoke(app, ["estimate-depth", str(portrait_path), "-o", str(out), "--model", str(tight_masked_dir),
                            "--steps", "1", "-q"])
    assert r.exit_code == 0, r.output
    cli = np.load(out)

    model = load_model(tight_masked_dir)
    tight = estimate_depth(model, astronaut, steps=1)  # the library crops with the model's margin too
    assert np.allclose(tight.crop.box, square_box(detect_faces(astronaut)[0], TIGHT))
    assert np.array_equal(cli > 0, tight.valid) and np.allclose(cli, tight.to_units(), atol=0.5)
    model.meta.crop_margin = DEFAULT_MARGIN  # the same weights, framed the default way, give another depth map
    loose = estimate_depth(model, astronaut, steps=1)
    assert width(loose.crop.box) > width(tight.crop.box)
    assert not np.allclose(cli, loose.to_units(), atol=0.5)
    # an input cropped for another framing is refused, not silently mis-framed
    model.meta.crop_margin = TIGHT
    with pytest.raises(ValueError, match="margin 0.6 .* margin 0.3"):
        estimate_depths(model, [prepare_depth_input(astronaut)], steps=1)


def test_depth2img_crops_with_the_given_margin_and_refuses_another(tight_masked_dir, astronaut):
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.depth2img import prepare_depth2img, run_depth2img

    depth = np.ones(astronaut.shape[:2], np.float32)
    face = detect_faces(astronaut)[0]
    task = prepare_depth2img(depth, astronaut, margin=TIGHT)
    assert np.allclose(task.reference.box, square_box(face, TIGHT))
    with pytest.raises(ValueError, match="margin 0.6 .* margin 0.3"):
        run_depth2img(load_model(tight_masked_dir), prepare_depth2img(depth, astronaut), steps=1)
