"""RGBDFaceModel.take_masked: stage 2 of another run on the same codec joins a model whose stage 1 stays its own."""

import pytest
import torch

from rgbdface.models.builder import build_tiny
from rgbdface.models.model import RGBDFaceModel
from rgbdface.utils import InputError
from tests.motion_helpers import perturb


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _stage2(seed: int) -> RGBDFaceModel:
    """A tiny model with its own stage 1 (joint weights moved by `seed`) and a stage 2 on it (masked weights moved too)."""
    m = build_tiny(32, seed=0)
    with torch.no_grad():
        perturb(m.joint.unet, seed=seed)
        perturb(m.joint.reference_unet, seed=seed + 1)
    m.add_masked_denoiser()
    with torch.no_grad():
        perturb(m.masked.unet, seed=seed + 2)
    m.meta.stages = [0, 1, 2]
    m.meta.known_latents, m.meta.depth_steps = "clean", 1
    m.meta.extra["stage2"] = {"steps": 7}
    return m


def _masked_output(model: RGBDFaceModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    c = model.meta.latent_channels
    z = torch.randn(1, model.masked.unet.config.in_channels, model.latent_size, model.latent_size, generator=g)
    ref = torch.randn(1, c, model.latent_size, model.latent_size, generator=g)
    with torch.no_grad():
        return model.masked(z, torch.tensor([500]), model.context, ref).float()


def test_take_masked_keeps_the_joint_and_brings_the_reference_stage_2_was_trained_with(tmp_path):
    appearance, depth = build_tiny(32, seed=0), _stage2(seed=10)
    with torch.no_grad():
        perturb(appearance.joint.unet, seed=20)
    joint_before = {k: v.clone() for k, v in appearance.joint.state_dict().items()}
    appearance.meta.stages = [0, 1]
    appearance.take_masked(depth)

    assert all(torch.equal(v, appearance.joint.state_dict()[k]) for k, v in joint_before.items())  # stage 1 as it was
    assert not _differs(appearance.masked.unet, depth.masked.unet)
    # the masked denoiser reads the ReferenceNet it was trained with (the other run's), not this model's
    assert not _differs(appearance.masked.reference_unet, depth.joint.reference_unet)
    assert _differs(appearance.masked.reference_unet, appearance.joint.reference_unet)
    assert appearance.meta.stages == [0, 1, 2] and appearance.meta.known_latents == "clean" and appearance.meta.depth_steps == 1
    assert appearance.meta.extra["stage2"] == {"steps": 7}
    assert torch.allclose(_masked_output(appearance), _masked_output(depth), atol=1e-5)

    # saved and loaded, it computes the same; the joint denoiser too
    folder = appearance.save_pretrained(tmp_path / "combined")
    assert (folder / "masked_reference_unet").is_dir()
    loaded = RGBDFaceModel.from_pretrained(folder)
    assert torch.allclose(_masked_output(loaded), _masked_output(depth), atol=1e-5)
    assert not _differs(loaded.joint.unet, appearance.joint.unet)


def test_take_masked_refuses_another_codec_or_schedule():
    depth = _stage2(seed=10)
    with pytest.raises(InputError, match="codec"):
        build_tiny(32, seed=1).take_masked(depth)
    other = build_tiny(32, seed=0)
    other.scheduler_config = {**other.scheduler_config, "prediction_type": "v_prediction" if
                              other.scheduler_config.get("prediction_type") != "v_prediction" else "epsilon"}
    with pytest.raises(InputError, match="schedule"):
        other.take_masked(depth)
    with pytest.raises(InputError, match="stage 2"):
        build_tiny(32, seed=0).take_masked(build_tiny(32, seed=0))


def test_take_masked_from_or_into_a_copy_saved_in_float16(tmp_path):
    depth = _stage2(seed=10)
    half = RGBDFaceModel.from_pretrained(build_tiny(32, seed=0).save_pretrained(tmp_path / "half", half=True))
    half.take_masked(depth)  # a float16 copy of the same codec is the same codec
    assert torch.allclose(_masked_output(half), _masked_output(depth), atol=1e-5)
    depth_half = RGBDFaceModel.from_pretrained(depth.save_pretrained(tmp_path / "depth_half", half=True))
    build_tiny(32, seed=0).take_masked(depth_half)
    with pytest.raises(InputError, match="codec"):
        build_tiny(32, seed=1).take_masked(depth_half)


def _zero_snr(model: RGBDFaceModel) -> RGBDFaceModel:
    model.scheduler_config = {**model.scheduler_config, "rescale_betas_zero_snr": True}
    return model


def test_take_masked_with_its_own_codec_and_schedule(tmp_path, examples_dir, portrait_dataset):
    import numpy as np
    from typer.testing import CliRunner

    from rgbdface.cli.app import app
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image
    from rgbdface.pipelines.depth import estimate_depth_crop
    from rgbdface.pipelines.depth2img import depth2img
    from rgbdface.pipelines.generate import generate

    photo = load_image(examples_dir / "obama.jpg")
    crop = crop_face(photo, 32).image
    depth = _stage2(seed=10)  # codec of seed 0, the SD schedule
    appearance = _zero_snr(build_tiny(32, seed=1))  # another codec and schedule
    appearance.context = depth.context.clone()  # the text context is fixed for a configuration
    appearance.meta.stages = [0, 1]
    samples_before = generate(appearance, crop, num_samples=1, steps=2, seed=3)
    codec_before = {k: v.clone() for k, v in appearance.codec.vae.state_dict().items()}
    appearance.take_masked(depth, own_codec=True)

    # depth estimation and depth-to-image run exactly as in the model stage 2 came from
    assert appearance.masked_has_own_codec and appearance.masked_schedule == depth.scheduler_config
    assert appearance.sampling_scheduler(masked=True).config.get("rescale_betas_zero_snr") is not True
    assert appearance.sampling_scheduler().config.rescale_betas_zero_snr is True
    want = estimate_depth_crop(depth, crop, steps=2)
    np.testing.assert_array_equal(estimate_depth_crop(appearance, crop, steps=2), want)
    yy, xx = np.mgrid[:64, :64] / 63.0 - 0.5
    dome = np.where(xx**2 / 0.1 + yy**2 / 0.15 < 1, 600.0 - 80.0 * np.sqrt(np.clip(1 - xx**2 / 0.1 - yy**2 / 0.15, 0, 1)), 0.0)
    np.testing.assert_array_equal(depth2img(appearance, dome, photo, steps=2).crop, depth2img(depth, dome, photo, steps=2).crop)
    # generation keeps this model's codec, schedule and joint denoiser
    assert all(torch.equal(v, appearance.codec.vae.state_dict()[k]) for k, v in codec_before.items())
    after = generate(appearance, crop, num_samples=1, steps=2, seed=3)
    np.testing.assert_array_equal(after.rgb, samples_before.rgb)

    # saved (in float16 too) and loaded: the same
    folder = appearance.save_pretrained(tmp_path / "joined")
    assert (folder / "masked_vae").is_dir() and (folder / "masked_scheduler" / "scheduler_config.json").is_file()
    loaded = RGBDFaceModel.from_pretrained(folder)
    np.testing.assert_array_equal(estimate_depth_crop(loaded, crop, steps=2), want)
    np.testing.assert_array_equal(generate(loaded, crop, num_samples=1, steps=2, seed=3).rgb, samples_before.rgb)
    half = RGBDFaceModel.from_pretrained(appearance.save_pretrained(tmp_path / "half", half=True))
    assert half.masked_has_own_codec and half.masked_schedule == depth.scheduler_config
    # a clone keeps it
    assert loaded.clone().masked_has_own_codec

    # from a model on the same codec and schedule, nothing extra is kept
    same = build_tiny(32, seed=0)
    same.take_masked(depth, own_codec=True)
    assert not same.masked_has_own_codec and same.masked_scheduler_config is None
    assert not (same.save_pretrained(tmp_path / "same") / "masked_vae").exists()

    # stage 2 cannot be trained further on the joined model: its stage 2 belongs to another model's latents
    r = CliRunner().invoke(app, ["finetune-mask", str(portrait_dataset), "-o", str(tmp_path / "run"), "-m", str(folder)])
    assert r.exit_code == 1 and "keeps a codec and schedule of its own" in r.stderr and not (tmp_path / "run").exists()


def test_take_masked_own_codec_still_needs_the_same_latent_layout():
    depth = _stage2(seed=10)
    other = build_tiny(32, seed=0)
    other.context = other.context + 1.0
    with pytest.raises(InputError, match="text context"):
        other.take_masked(depth, own_codec=True)
