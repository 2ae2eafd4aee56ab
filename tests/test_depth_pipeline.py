"""Depth estimation as a library: sizes, ranges, the face mask, batching, ensembling; the depth mesh."""

import numpy as np
import pytest

from rgbdface.data.face import paste_back
from rgbdface.pipelines.depth import DepthResult, estimate_depth, estimate_depths, face_region_mask, prepare_depth_input
from rgbdface.pipelines.ensemble import ensemble_depth
from rgbdface.utils import InputError


@pytest.fixture(scope="module")
def prepared(portraits):
    from rgbdface.data.io import load_image

    return [prepare_depth_input(load_image(p), name=str(p)) for p in portraits[:2]]


def test_depth_has_the_input_size_and_is_zero_outside_the_face(tiny_masked_model, prepared):
    x = prepared[1]  # biden: 371 x 560, not square
    r = estimate_depths(tiny_masked_model, [x], steps=2, ensemble=1)[0]
    h, w = x.image.shape[:2]
    assert isinstance(r, DepthResult)
    assert r.depth.shape == (h, w) and r.valid.shape == (h, w) and r.depth.dtype == np.float32
    assert r.uncertainty is None and r.members.shape == (1, 32, 32)
    # the valid region is the face region from the face mesh, pasted into the full frame
    assert np.array_equal(r.valid, paste_back(x.mask.astype(np.float32), x.crop, fill=0.0) > 0.5)
    assert 0.005 < r.valid.mean() < 0.5
    nose = x.crop.to_source(x.crop.landmarks[1:2, :2])[0]  # MediaPipe's nose tip, in source pixels
    assert r.valid[int(nose[1]), int(nose[0])]
    assert np.all(r.depth[~r.valid] == 0)
    assert r.depth[r.valid].min() >= -1 and r.depth[r.valid].max() <= 1
    u16 = r.to_u16()
    assert u16.dtype == np.uint16 and np.all(u16[~r.valid] == 0) and u16[r.valid].min() >= 1
    assert np.allclose(r.to_units()[r.valid], u16[r.valid], atol=0.5)
    # the pasted depth is the crop-frame depth mapped into the frame
    inside = paste_back(r.crop_depth, x.crop, fill=0.0)
    assert np.allclose(r.depth[r.valid], inside[r.valid])


def test_face_region_mask_covers_the_mesh(prepared):
    x = prepared[0]
    mask = face_region_mask(x.crop)
    assert mask.shape == (512, 512) and mask.dtype == bool
    lm = x.crop.landmarks[:468, :2].astype(int).clip(0, 511)
    assert mask[lm[:, 1], lm[:, 0]].mean() > 0.9  # the mesh's own vertices lie in it
    assert not mask[:20].any() and not mask[:, :20].any()  # the crop's margins are not face


def test_an_image_gets_the_same_depth_alone_or_in_a_batch(tiny_masked_model, prepared):
    both = estimate_depths(tiny_masked_model, prepared, steps=2, seed=3)
    alone = estimate_depths(tiny_masked_model, prepared[1:], steps=2, seed=3)[0]
    assert np.allclose(both[1].depth, alone.depth, atol=1e-4)
    other_seed = estimate_depths(tiny_masked_model, prepared[1:], steps=2, seed=4)[0]
    assert not np.allclose(other_seed.crop_depth, alone.crop_depth, atol=1e-4)
    # a stochastic scheduler draws its step noise from each image's own generator too
    both = estimate_depths(tiny_masked_model, prepared, steps=2, seed=3, scheduler="ddpm", ensemble=2)
    alone = estimate_depths(tiny_masked_model, prepared[1:], steps=2, seed=3, scheduler="ddpm", ensemble=2)[0]
    assert np.allclose(both[1].members, alone.members, atol=1e-4)


def test_ensemble_gives_median_and_uncertainty(tiny_masked_model, prepared):
    r = estimate_depths(tiny_masked_model, prepared[:1], steps=2, ensemble=3)[0]
    assert r.members.shape == (3, 32, 32)
    assert r.uncertainty.shape == r.depth.shape and np.all(r.uncertainty >= 0)
    assert np.all(r.uncertainty[~r.valid] == 0) and r.uncertainty[r.valid].max() > 0
    assert np.allclose(r.crop_depth, np.median(r.members, axis=0), atol=1e-6)


def test_affine_members_give_back_the_same_depth(rng):
    d = rng.normal(size=(24, 20))
    valid = np.zeros_like(d, bool)
    valid[4:20, 3:17] = True
    members = np.stack([d, 2.0 * d + 0.5, 0.3 * d - 1.0, 1.5 * d + 3.0])
    for reference in ("first", "median"):
        e = ensemble_depth(members, valid, reference=reference)
        ref = members[e.reference]
        assert np.allclose(e.depth, ref, atol=1e-5) and np.allclose(e.uncertainty, 0, atol=1e-5)
        assert np.allclose(e.aligned, ref[None], atol=1e-5)
    assert ensemble_depth(members, valid, reference="first").reference == 0


def test_ensemble_is_robust_to_an_outlier_member(rng):
    d = rng.normal(size=(16, 16))
    valid = np.ones_like(d, bool)
    noise = rng.normal(size=d.shape) * 5
    members = np.stack([noise, d, 2 * d + 1, 0.5 * d - 2, d + 0.01 * rng.normal(size=d.shape)])
    e = ensemble_depth(members, valid)  # the median member is never the outlier
    assert e.reference != 0
    ref = members[e.reference]
    # the median of the aligned members follows d, not the noise
    corr = np.corrcoef(e.depth.ravel(), ref.ravel())[0, 1]
    assert corr > 0.99
    # where the members disagree the uncertainty is larger than where they agree
    assert e.uncertainty.mean() > 0
    with pytest.raises(ValueError, match="reference"):
        ensemble_depth(members, valid, reference="mean")


def test_model_without_stage_2_is_refused(tiny_model, astronaut):
    with pytest.raises(InputError, match="stage 2"):
        estimate_depth(tiny_model, astronaut, steps=1)


def test_no_face_is_one_line_input_error():
    from rgbdface.data.face import NoFaceError

    with pytest.raises(NoFaceError, match="blank"):
        prepare_depth_input(np.full((96, 96, 3), 200, np.uint8), name="blank")


def test_depth_mesh_geometry_and_round_trip(tmp_path):
    import trimesh

    from rgbdface.data.surface import depth_to_mesh, save_mesh

    depth = np.zeros((6, 7), np.float32)
    depth[1:5, 1:6] = np.linspace(1.0, 2.0, 5)[None]  # farther to the right
    depth[1, 1] = 0  # one hole: its block keeps one triangle
    colors = np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3)
    mesh = depth_to_mesh(depth, colors=colors, depth_scale=2.0)
    assert len(mesh.vertices) == 19 and len(mesh.faces) == 2 * 11 + 1
    # camera: x right (u + 0.5), y up (-(v + 0.5)), z toward the viewer, nearest point at z = 0
    assert np.allclose(mesh.vertices[0], [2.5, -1.5, -2.0 * (depth[1, 2] - 1.0)])
    assert np.isclose(mesh.vertices[:, 2].max(), 0.0)
    # farther to the right: the plane faces the viewer and turns to the right, exactly as relight's normals
    from rgbdface.pipelines.relight import normals_from_depth

    expected = normals_from_depth(depth, depth_scale=2.0)[2, 3]
    assert np.allclose(mesh.face_normals, expected, atol=1e-6) and expected[0] > 0 and expected[2] > 0
    assert np.array_equal(mesh.visual.vertex_colors[0, :3], colors[1, 2])
    for suffix in (".ply", ".obj", ".glb"):
        path = save_mesh(tmp_path / f"m{suffix}", mesh)
        back = trimesh.load(path, force="mesh", process=False)
        assert len(back.vertices) == 19 and len(back.faces) == 23
        assert np.allclose(np.sort(back.vertices, axis=0), np.sort(mesh.vertices, axis=0), atol=1e-5)


def test_depth_of_a_ready_crop_covers_it_whole(tiny_masked_model, prepared):
    from rgbdface.pipelines.depth import estimate_depth_crop

    x = prepared[0]
    crop = x.crop.image[::4, ::4].copy()  # a 128 px face crop, as prep-depth writes them
    d = estimate_depth_crop(tiny_masked_model, crop, steps=2, ensemble=2)
    assert d.shape == (128, 128) and d.dtype == np.float32
    assert np.isfinite(d).all() and -1 <= d.min() and d.max() <= 1 and d.std() > 0
    with pytest.raises(ValueError, match="square"):
        estimate_depth_crop(tiny_masked_model, x.image[:, :100], steps=1)


def test_eval_scores_the_model_on_a_dataset(tiny_masked_model_dir, portrait_dataset):
    import json

    from typer.testing import CliRunner

    from rgbdface.cli.app import app

    r = CliRunner().invoke(app, ["eval", "--data", str(portrait_dataset), "--method", f"model:{tiny_masked_model_dir}",
                                 "--steps", "1", "--ensemble", "2", "--format", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)  # one method: its report
    assert row["n_images"] == 2 and 0 <= row["delta1"] <= 1 and row["abs_rel"] > 0


def test_a_model_names_its_own_depth_steps(tiny_masked_model, prepared, monkeypatch):
    from rgbdface.pipelines.depth import DEFAULT_DEPTH_STEPS, estimate_depth_crop

    crop = prepared[0].crop.image[::4, ::4].copy()
    seen, calls = [], []
    original_step = tiny_masked_model.masked.forward

    def counting(*a, **k):
        calls.append(1)
        return original_step(*a, **k)

    monkeypatch.setattr(tiny_masked_model.masked, "forward", counting)
    estimate_depth_crop(tiny_masked_model, crop)
    seen.append(len(calls))
    monkeypatch.setattr(tiny_masked_model.meta, "depth_steps", 2)
    calls.clear()
    default = estimate_depth_crop(tiny_masked_model, crop)
    seen.append(len(calls))
    calls.clear()
    explicit = estimate_depth_crop(tiny_masked_model, crop, steps=3)
    seen.append(len(calls))
    assert seen == [DEFAULT_DEPTH_STEPS, 2, 3]  # one denoiser call per step (no guidance)
    assert not np.array_equal(explicit, default)
    np.testing.assert_array_equal(default, estimate_depth_crop(tiny_masked_model, crop, steps=2))


def test_flip_adds_the_mirrored_crops_estimate_mirrored_back(tiny_masked_model, prepared, monkeypatch):
    from rgbdface.pipelines.depth import estimate_depth_crop, sample_depth

    crops = [x.crop.image[::8, ::8].copy() for x in prepared]  # 64 px crops, two faces
    plain = sample_depth(tiny_masked_model, crops, steps=2, seed=5, ensemble=2)
    mirrored = sample_depth(tiny_masked_model, [c[:, ::-1].copy() for c in crops], steps=2, seed=5, ensemble=2)
    both = sample_depth(tiny_masked_model, crops, steps=2, seed=5, ensemble=2, flip=True)
    assert both.shape == (2, 4, 32, 32)
    np.testing.assert_allclose(both[:, :2], plain, atol=1e-5)  # its own members first, unchanged
    np.testing.assert_allclose(both[:, 2:], mirrored[:, :, :, ::-1], atol=1e-5)  # then the mirror's, mirrored back
    assert not np.allclose(both[:, 2:], plain, atol=1e-3)  # the untrained model is not symmetric: a real second opinion

    # estimates ensemble both; the model's depth_flip is the default, an explicit flip wins
    r = estimate_depths(tiny_masked_model, prepared[:1], steps=2, seed=5, flip=True)[0]
    assert r.members.shape == (2, 32, 32) and r.uncertainty is not None
    crop = crops[0]
    off = estimate_depth_crop(tiny_masked_model, crop, steps=2, seed=5)
    on = estimate_depth_crop(tiny_masked_model, crop, steps=2, seed=5, flip=True)
    assert not np.allclose(on, off, atol=1e-3)
    monkeypatch.setattr(tiny_masked_model.meta, "depth_flip", True)
    np.testing.assert_array_equal(estimate_depth_crop(tiny_masked_model, crop, steps=2, seed=5), on)
    np.testing.assert_array_equal(estimate_depth_crop(tiny_masked_model, crop, steps=2, seed=5, flip=False), off)
