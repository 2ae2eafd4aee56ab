"""`depth2img` (full and region modes) and `relight` without --depth, on real portraits and tiny stage-2 models."""

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.io import load_image
from rgbdface.pipelines.depth import estimate_depth
from rgbdface.pipelines.depth2img import crop_depth, depth2img, face_box_of_depth, is_face_crop, prepare_depth2img
from rgbdface.utils import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def face_depth(tiny_masked_model, astronaut):
    """The astronaut's estimated depth (full frame, 1..65535, 0 outside the face)."""
    return estimate_depth(tiny_masked_model, astronaut, steps=1).to_units()


def test_full_mode_from_full_frame_and_crop_frame_depth(tiny_masked_model, astronaut, face_depth):
    out = depth2img(tiny_masked_model, face_depth, reference=astronaut, steps=2)
    assert out.image.shape == (512, 512, 3) and out.image.dtype == np.uint8 and out.changed is None
    # a square depth of another size is a face crop already: the output has its size
    crop = crop_depth(face_depth, prepare_depth2img(face_depth, astronaut).reference.box, 96)
    out = depth2img(tiny_masked_model, crop, reference=astronaut, steps=2)
    assert out.image.shape == (96, 96, 3)
    assert is_face_crop(crop) and not is_face_crop(face_depth)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_full_frame_depth_of_another_photo_is_cropped_around_its_face(tiny_masked_model, astronaut, face_depth, portraits,
                                                                       portrait_dataset):
    """A full-frame depth map (estimate-depth's) whose photo is not the reference: once read as a face crop
    (a misframed output of the depth's size), now cropped around its face the way the model's crops are."""
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_depth
    from rgbdface.data.manifest import load_manifest

    other = load_image(next(p for p in portraits if p.stem == "obama"))
    assert face_depth.shape[0] == face_depth.shape[1] and face_depth.shape != other.shape[:2]
    box = face_box_of_depth(face_depth)
    assert _iou(box, crop_face(astronaut, size=64).box) > 0.7  # the frame prep-depth would have cut
    task = prepare_depth2img(face_depth, other)
    assert task.cropped_from_full_frame and task.depth.shape == (512, 512) and is_face_crop(task.depth)
    assert depth2img(tiny_masked_model, face_depth, reference=other, steps=1).image.shape == (512, 512, 3)
    # not square, not the reference's size: cropped too
    assert prepare_depth2img(face_depth[:, :500], other).cropped_from_full_frame
    # prep-depth's crops (wild and studio) stay face crops, used as they are
    for s in load_manifest(portrait_dataset):
        assert is_face_crop(load_depth(s.depth)), s.id
    tiny = np.zeros((300, 300), np.float32)
    tiny[10:13, 10:13] = 1.0
    with pytest.raises(InputError, match="too few for a face"):
        prepare_depth2img(tiny, other)


def test_the_depth_steers_the_image(tiny_masked_model, astronaut, face_depth):
    import torch

    # Stage 2 starts with the depth's input channels at zero; give them weights, as training would.
    model = tiny_masked_model.clone()
    with torch.no_grad():
        model.masked.unet.conv_in.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(0))
    a = depth2img(model, face_depth, reference=astronaut, steps=2, seed=1).image
    edited = face_depth.copy()
    edited[edited > 0] = edited[edited > 0].max() + 1000 - edited[edited > 0]  # the relief turned inside out
    b = depth2img(model, edited, reference=astronaut, steps=2, seed=1).image
    assert not np.array_equal(a, b)
    assert np.array_equal(a, depth2img(model, face_depth, reference=astronaut, steps=2, seed=1).image)


def test_crop_depth_does_not_blend_holes():
    depth = np.zeros((64, 64), np.float32)
    depth[16:48, 16:48] = 500.0
    out = crop_depth(depth, (8.0, 8.0, 56.0, 56.0), 96)
    assert set(np.unique(out)) <= {0.0, 500.0} or np.allclose(out[out > 0], 500.0)
    assert 0.3 < (out > 0).mean() < 0.6


def test_region_mode_changes_only_the_region(tiny_masked_model, astronaut, face_depth):
    region = np.zeros(astronaut.shape[:2], bool)
    region[150:200, 190:260] = True  # the lower face
    region[0:10, 0:10] = True  # a corner far outside the face crop: kept as it is
    out = depth2img(tiny_masked_model, face_depth, image=astronaut, region=region, steps=2)
    assert out.image.shape == astronaut.shape
    assert np.array_equal(out.image[~region], astronaut[~region])  # outside the region: unchanged, pixel for pixel
    assert out.changed[150:200, 190:260].all() and not out.changed[0:10, 0:10].any()
    assert not np.array_equal(out.image[150:200, 190:260], astronaut[150:200, 190:260])
    with pytest.raises(InputError, match="empty"):
        prepare_depth2img(face_depth, image=astronaut, region=np.zeros_like(region))
    with pytest.raises(InputError, match="must match"):
        prepare_depth2img(face_depth[:-1], image=astronaut, region=region)


def test_depth2img_cli(tiny_masked_model_dir, tiny_model_dir, portrait_path, face_depth, tmp_path):
    from rgbdface.data.io import relative_depth_to_u16, save_depth16

    depth_png = tmp_path / "d.png"
    save_depth16(depth_png, np.round(face_depth).astype(np.uint16))
    common = ["--model", str(tiny_masked_model_dir), "--steps", "1", "-q"]
    r = runner.invoke(app, ["depth2img", str(depth_png), "--reference", str(portrait_path), "-o", str(tmp_path / "g.png"), *common])
    assert r.exit_code == 0, r.output
    assert iio.imread(tmp_path / "g.png").shape == (512, 512, 3)
    mask = np.zeros((512, 512), np.uint8)
    mask[150:200, 190:260] = 255
    iio.imwrite(tmp_path / "m.png", mask)
    r = runner.invoke(app, ["depth2img", str(depth_png), "--image", str(portrait_path), "--region", str(tmp_path / "m.png"),
                            "-o", str(tmp_path / "e.png"), *common])
    assert r.exit_code == 0, r.output
    edited, original = iio.imread(tmp_path / "e.png"), load_image(portrait_path)
    assert np.array_equal(edited[mask == 0], original[mask == 0])
    # errors: one line, nothing written
    small = tmp_path / "small.png"
    save_depth16(small, relative_depth_to_u16(np.zeros((100, 80)), np.ones((100, 80), bool)))
    cases = [
        (["depth2img", str(small), "--reference", str(portrait_path)], 1, "its face cannot be located"),
        (["depth2img", str(depth_png), "--reference", str(portrait_path), "--model", str(tiny_model_dir)], 1, "stage 2"),
        (["depth2img", str(depth_png), "--image", str(portrait_path)], 2, "--region"),
        (["depth2img", str(depth_png)], 2, "--reference"),
    ]
    for args, code, message in cases:
        out = tmp_path / "never.png"
        r = runner.invoke(app, [*args, "-o", str(out), "--steps", "1", *(["--model", str(tiny_masked_model_dir)] if "--model" not in args else [])])
        assert r.exit_code == code and message in r.stderr, (args, r.stderr)
        assert len([x for x in r.stderr.splitlines() if x.startswith("rgbdface: error:")]) == 1
        assert not out.exists()


def test_relight_without_depth_estimates_it(tiny_masked_model_dir, tiny_model_dir, portrait_path, tmp_path):
    out = tmp_path / "lit.png"
    r = runner.invoke(app, ["relight", str(portrait_path), "--light", "1,0,1", "--ambient", "0.1", "-o", str(out),
                            "--model", str(tiny_masked_model_dir), "--steps", "1", "--shading", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert "estimating the depth" in r.stderr
    lit, original = iio.imread(out), load_image(portrait_path)
    shading = iio.imread(tmp_path / "s.png")
    face = shading > 0  # the estimated face region
    assert 0.005 < face.mean() < 0.5
    assert np.array_equal(lit[~face], original[~face])  # outside the face: unchanged
    assert not np.array_equal(lit[face], original[face])
    # the same through the library call, with a model lacking stage 2: one-line error, nothing written
    r = runner.invoke(app, ["relight", str(portrait_path), "--light", "0,0,1", "-o", str(tmp_path / "no.png"),
                            "--model", str(tiny_model_dir), "--steps", "1"])
    assert r.exit_code == 1 and "stage 2" in r.stderr and not (tmp_path / "no.png").exists()
