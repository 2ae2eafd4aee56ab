"""The hook-placed temporal modules compute what diffusers' UNetMotionModel computes with the same weights."""

import copy

import torch
from diffusers import UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from einops import rearrange

from motion_helpers import perturb, tiny_motion_model


@torch.no_grad()
def test_temporal_hooks_equal_unet_motion_model_without_motion_frames():
    """No reference, no motion frames, audio attention at its zero start: our stage-3 denoiser is
    AnimateDiff's UNet, so it must match `UNetMotionModel.from_unet2d` with the same adapter."""
    m = tiny_motion_model()
    perturb(m.motion.temporal, scale=0.2, seed=3)  # temporal attention that does something
    den = m.motion
    assert any(p.abs().max() > 0 for n, p in den.temporal.named_parameters() if "proj_out" in n)

    # diffusers' motion UNet from the same 2D UNet (plain attention processors) and the same adapter
    den.uninstall()
    unet2d = copy.deepcopy(m.joint.unet)
    den.install()
    unet2d.set_attn_processor(AttnProcessor2_0())
    reference = UNetMotionModel.from_unet2d(unet2d, motion_adapter=copy.deepcopy(den.temporal)).eval()

    b, f, s = 2, 6, m.latent_size
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(b, f, 2 * m.meta.latent_channels, s, s, generator=g)  # [B, F, 2C, h, w]
    t = torch.tensor([900, 250])
    audio = torch.randn(b, f, den.config.audio_window, den.config.audio_dim, generator=g)
    context = m.context.expand(b * f, -1, -1)  # [(B F), L, D]: UNetMotionModel takes one per frame

    den.clear()
    ours = den(sample, t, m.context, audio, None, None)  # [B, F, 2C, h, w]
    theirs = reference(rearrange(sample, "b f c h w -> b c f h w"), t, encoder_hidden_states=context).sample
    theirs = rearrange(theirs, "b c f h w -> b f c h w")
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 1e-5 * scale, float((ours - theirs).abs().max() / scale)

    # the temporal modules matter: the same 2D UNet frame by frame differs
    per_frame = unet2d(rearrange(sample, "b f c h w -> (b f) c h w"), t.repeat_interleave(f),
                       encoder_hidden_states=m.context.expand(b * f, -1, -1)).sample
    assert (rearrange(per_frame, "(b f) c h w -> b f c h w", b=b) - theirs).abs().max() > 1e-3 * scale
