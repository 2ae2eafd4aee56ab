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
