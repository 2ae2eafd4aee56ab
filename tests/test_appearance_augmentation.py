"""What the training streams draw: studio renders over their identity's photo or a random field, one colour
transform on a target, its reference and its motion frames alike, and stage 2's image → depth samples at the
last timestep (real prep-depth data of an example portrait)."""

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate as collate

from rgbdface.training.data import (ClipStream, ImageStream, LatentSpec, apply_colour, colour_for, load_depth_map, load_rgb,
                                    hue_rotation, random_colour_matrix, read_samples)

SPEC = LatentSpec(64, 4, 8, 1000)


@pytest.fixture(scope="module")
def clip_dataset(tmp_path_factory, examples_dir):
    """obama.jpg at 64 px with 3 studio renders and one 1.2 s talking clip."""
    from rgbdface.data.prep import PrepConfig, prepare_dataset

    root = tmp_path_factory.mktemp("data") / "obama"
    summary = prepare_dataset([examples_dir / "obama.jpg"], root, PrepConfig(size=64, studio_views=3, talking_clips=1, clip_seconds=1.2))
    assert not summary.failed
    return root


def test_colour_matrix_applies_alike_and_can_make_black_and_white():
    rng = np.random.default_rng(0)
    mats = [random_colour_matrix(rng) for _ in range(200)]
    grey = [m for m in mats if torch.allclose(m[0], m[1]) and torch.allclose(m[1], m[2])]
    assert 20 < len(grey) < 70  # GREY_PROB = 0.2
    x = torch.rand(3, 4, 4) * 2 - 1
    y = apply_colour(x, grey[0])
    assert torch.allclose(y[0], y[1]) and torch.allclose(y[1], y[2])  # black and white
    assert torch.equal(apply_colour(x, torch.eye(3)), x.clamp(-1, 1))  # the identity leaves colours alone
    assert y.min() >= -1 and y.max() <= 1


def test_hue_rotation_turns_hues_and_keeps_greys():
    third = torch.from_numpy(hue_rotation(2 * np.pi / 3).astype(np.float32))
    assert torch.allclose(third @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # red → green
    assert torch.allclose(third @ torch.tensor([0.4, 0.4, 0.4]), torch.tensor([0.4, 0.4, 0.4]), atol=1e-6)  # grey stays
    assert np.allclose(hue_rotation(1.0) @ hue_rotation(-1.0), np.eye(3))


def test_colour_hue_makes_skin_any_colour():
    skin = torch.tensor([0.8, 0.55, 0.45])

    def dominant(hue: float) -> np.ndarray:
        rng = np.random.default_rng(1)
        return np.bincount([int(torch.argmax(random_colour_matrix(rng, hue) @ skin)) for _ in range(300)], minlength=3)

    assert dominant(0.0)[0] > 0.9 * 300 * 0.8  # mild transforms: skin stays reddest (greys count as red)
    counts = dominant(1.0)
    assert counts.min() > 40  # turned hues: red, green and blue skin alike
    rng0, rng1 = np.random.default_rng(3), np.random.default_rng(3)
    assert all(torch.equal(random_colour_matrix(rng0), random_colour_matrix(rng1, 0.0)) for _ in range(20))


def test_studio_targets_and_references_over_the_identity_photo(clip_dataset):
    samples = read_samples(clip_dataset)
    photo_i = next(i for i, s in enumerate(samples) if s.source != "studio")
    photo = load_rgb(samples[photo_i].rgb, 64)
    on = ImageStream(samples, SPEC, 0, None, photo_background=1.0)
    off = ImageStream(samples, SPEC, 0, None)
    seen = 0
    for n in range(12):
        a, b = on[n], off[n]
        s = samples[a["index"]]
        assert a["index"] == b["index"] and a["ref_index"] == b["ref_index"]
        if s.source != "studio":
            assert torch.equal(a["rgb"], b["rgb"]) and not a["fresh"]  # the photo itself is left alone
            continue
        seen += 1
        face = load_depth_map(s.depth, 64) > 0
        assert torch.equal(a["rgb"][:, face[0]], b["rgb"][:, face[0]])  # the rendered face is kept
        assert torch.equal(a["rgb"][:, ~face[0]], photo[:, ~face[0]])  # around it, the photo
        assert a["fresh"] and torch.equal(a["depth"], b["depth"])
        r = samples[a["ref_index"]]
        if r.source == "studio":  # the reference shares the background
            rface = load_depth_map(r.depth, 64)[0] > 0
            assert torch.equal(a["reference"][:, ~rface], photo[:, ~rface])
    assert seen > 3


def test_colour_jitter_changes_target_and_reference_alike(clip_dataset):
    samples = read_samples(clip_dataset)
    on, off = ImageStream(samples, SPEC, 0, None, colour_jitter=1.0), ImageStream(samples, SPEC, 0, None)
    for n in range(6):
        a, b = on[n], off[n]
        m = on.colour_for(n)
        assert a["fresh"] and torch.equal(a["rgb"], apply_colour(b["rgb"], m)) and torch.equal(a["reference"], apply_colour(b["reference"], m))
        assert torch.equal(a["depth"], b["depth"])
    assert not torch.equal(on.colour_for(0), on.colour_for(1))  # a transform per sample
    turned = ImageStream(samples, SPEC, 0, None, colour_jitter=1.0, colour_hue=1.0)  # hues turned too, alike
    for n in range(6):
        a, b, m = turned[n], off[n], turned.colour_for(n)
        assert torch.equal(a["rgb"], apply_colour(b["rgb"], m)) and torch.equal(a["reference"], apply_colour(b["reference"], m))
    assert sum(not torch.equal(turned.colour_for(n), on.colour_for(n)) for n in range(10)) >= 5


def test_augmented_samples_are_not_cached(clip_dataset):
    from rgbdface.models.builder import build_tiny
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import make_objective

    model = build_tiny(image_size=64, seed=0)
    samples = read_samples(clip_dataset)
    cfg = resolve_config(1, "tiny", ["data.cache_latents=true", "data.colour_jitter=1.0"])
    stream = ImageStream(samples, LatentSpec(64, 4, model.latent_size, 1000), 0, None, colour_jitter=1.0)
    obj = make_objective(model, cfg)
    with torch.no_grad():
        loss, _ = obj(collate([stream[0], stream[1]]))
    assert torch.isfinite(loss)
    assert obj.cache and all(k[0] in ("depth", "valid") for k in obj.cache)  # depth latents (and cells) cached, jittered RGB never


def test_clip_frames_motion_and_reference_share_background_and_colour(clip_dataset):
    samples = read_samples(clip_dataset)

    def feats(sample):
        return np.zeros((100, 2), np.float32)

    kw = dict(frames=4, motion_frames=2, audio_features=feats, window=3)
    on = ClipStream(samples, SPEC, 0, photo_background=1.0, colour_jitter=1.0, **kw)
    off = ClipStream(samples, SPEC, 0, **kw)
    photo = load_rgb(next(s for s in samples if s.source != "studio").rgb, 64)
    a, b = on[0], off[0]
    m = colour_for(on, 0)
    assert m is not None
    for k, j in enumerate(a["indices"].tolist()):
        face = load_depth_map(samples[j].depth, 64)[0] > 0
        expected = apply_colour(torch.where(face, b["rgb"][k], photo), m)
        assert torch.allclose(a["rgb"][k], expected)
    # the background of every frame is the same photo through the same colour transform
    bg = ~torch.stack([load_depth_map(samples[j].depth, 64)[0] > 0 for j in a["indices"].tolist()]).any(0)
    assert torch.allclose(a["rgb"][:, :, bg], apply_colour(photo, m)[:, bg].expand(4, -1, -1))
    # the reference and the motion frames too: outside every face of the clip, the same coloured photo
    clip = samples[int(a["indices"][0])].clip
    anywhere = torch.stack([load_depth_map(s.depth, 64)[0] > 0 for s in samples if s.clip == clip]).any(0)
    ref = samples[a["ref_index"]]
    anywhere |= load_depth_map(ref.depth, 64)[0] > 0 if ref.source == "studio" else False
    for x in [a["reference"], *a["motion"]]:
        assert torch.allclose(x[:, ~anywhere], apply_colour(photo, m)[:, ~anywhere])


def test_same_reference_makes_the_target_its_own_reference(clip_dataset):
    samples = read_samples(clip_dataset)
    on = ImageStream(samples, SPEC, 0, None, same_reference=0.5, colour_jitter=1.0, photo_background=1.0)
    own = [on[n] for n in range(30)]
    same = [it for it in own if it["ref_index"] == it["index"]]
    assert 5 < len(same) < 25
    assert all(torch.equal(it["reference"], it["rgb"]) for it in same)  # after the background and colour change
    assert all(not torch.equal(it["reference"], it["rgb"]) for it in own if it["ref_index"] != it["index"])
    from rgbdface.training.masks import MaskSampler

    stage2 = ImageStream(samples, SPEC, 0, None, mask_sampler=MaskSampler(1.0, 0.0, 0.0, 0.0), same_reference=1.0)
    assert all(stage2[n]["ref_index"] != stage2[n]["index"] for n in range(10))  # stage 1 only


def test_random_background_is_shared_by_target_and_reference_and_new_per_sample(clip_dataset):
    samples = read_samples(clip_dataset)
    on = ImageStream(samples, SPEC, 0, None, random_background=1.0)
    off = ImageStream(samples, SPEC, 0, None)
    backgrounds = []
    for n in range(12):
        a, b = on[n], off[n]
        s = samples[a["index"]]
        if s.source != "studio":
            assert torch.equal(a["rgb"], b["rgb"])  # a photo keeps its own background
            continue
        face = load_depth_map(s.depth, 64)[0] > 0
        assert torch.equal(a["rgb"][:, face], b["rgb"][:, face]) and a["fresh"]
        assert not torch.allclose(a["rgb"][:, ~face], b["rgb"][:, ~face], atol=0.05)  # the render's own background is gone
        r = samples[a["ref_index"]]
        if r.source == "studio":  # the reference is drawn over the same field
            both = ~face & ~(load_depth_map(r.depth, 64)[0] > 0)
            assert torch.equal(a["reference"][:, both], a["rgb"][:, both])
        backgrounds.append(a["rgb"][:, ~face].mean(1))
    assert len(backgrounds) > 3
    assert min((x - y).abs().max() for i, x in enumerate(backgrounds) for y in backgrounds[i + 1:]) > 0.01  # a field per sample
    photo = load_rgb(next(s for s in samples if s.source != "studio").rgb, 64)
    both = ImageStream(samples, SPEC, 0, None, photo_background=1.0, random_background=1.0)
    for n in range(6):
        a = both[n]
        s = samples[a["index"]]
        if s.source == "studio":  # a photo first, a field only for the rest
            face = load_depth_map(s.depth, 64)[0] > 0
            assert torch.equal(a["rgb"][:, ~face], photo[:, ~face])


def test_random_field_is_smooth_and_in_range():
    from rgbdface.training.data import random_field

    f = random_field(np.random.default_rng(0), 64)
    assert f.shape == (3, 64, 64) and f.min() >= -1 and f.max() <= 1
    assert f.std() > 0.1  # colours, not one grey
    assert (f[:, 1:] - f[:, :-1]).abs().mean() < 0.1  # neighbours close: a smooth field, not noise
    assert not torch.equal(f, random_field(np.random.default_rng(1), 64))


def test_clip_frames_share_one_random_background(clip_dataset):
    samples = read_samples(clip_dataset)
    kw = dict(frames=4, motion_frames=2, audio_features=lambda s: np.zeros((100, 2), np.float32), window=3)
    a = ClipStream(samples, SPEC, 0, random_background=1.0, **kw)[0]
    faces = torch.stack([load_depth_map(samples[j].depth, 64)[0] > 0 for j in a["indices"].tolist()]).any(0)
    bg = a["rgb"][:, :, ~faces]
    assert torch.equal(bg, bg[:1].expand_as(bg))
    assert not torch.equal(bg[0], ClipStream(samples, SPEC, 0, **kw)[0]["rgb"][0][:, ~faces])


def test_final_step_trains_image_to_depth_at_the_last_timestep(clip_dataset):
    from rgbdface.training.masks import MaskSampler

    samples = read_samples(clip_dataset)
    masks = MaskSampler(0.3, 0.4, 0.3, 0.0)
    plain = ImageStream(samples, SPEC, 0, None, mask_sampler=masks)
    final = ImageStream(samples, SPEC, 0, None, mask_sampler=masks, final_step=0.5)
    moved = kept = 0
    for n in range(40):
        a, b = final[n], plain[n]
        i2d = not a["m_rgb"].any() and bool(a["m_depth"].all())
        if not i2d or a["timestep"] == b["timestep"]:
            assert int(a["timestep"]) == int(b["timestep"])  # other masks keep their uniform timestep
            kept += i2d
            continue
        assert int(a["timestep"]) == SPEC.num_train_timesteps - 1 and torch.equal(a["noise"], b["noise"])
        moved += 1
    assert moved >= 4 and kept >= 4
