"""The denoiser: a `diffusers.UNet2DConditionModel` whose channels are expanded (paper §3.3).

Stage 1 (joint):  input  [noisy RGB | noisy depth]                                   = 2C
                  output [eps RGB   | eps depth]                                      = 2C
Stage 2 (masked): input  [noisy RGB | noisy depth | m_rgb | m_depth | masked RGB | masked depth] = 4C + 2
                  output as stage 1.
Mask 1 = generate, 0 = keep. Masked latents are `z * (1 - m)` at latent resolution.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def _rebuild(unet: UNet2DConditionModel, **overrides) -> UNet2DConditionModel:
    """A new UNet with the same config but `overrides`, holding every weight of `unet` except conv_in/conv_out."""
    config = dict(unet.config)
    config.update(overrides)
    new = UNet2DConditionModel.from_config(config).to(device=unet.device)
    if unet.dtype != new.dtype:
        new = new.to(dtype=unet.dtype)
    state = {k: v for k, v in unet.state_dict().items() if not k.startswith(("conv_in.", "conv_out."))}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("conv_in.", "conv_out.")) for k in missing), (missing, unexpected)
    return new


@torch.no_grad()
def expand_unet_for_joint(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Widen an RGB UNet (C in, C out) into the joint RGB + depth denoiser (2C in, 2C out).

    Paper §3.3: the added input channels are zero-initialised, so at initialisation the
    prediction depends on the RGB latent alone exactly as the pretrained model's does;
    the output layer is duplicated, so the depth half starts as a copy of the RGB half.
    """
    c_in, c_out = unet.config.in_channels, unet.config.out_channels
    new = _rebuild(unet, in_channels=2 * c_in, out_channels=2 * c_out)
    new.conv_in.weight.zero_()
    new.conv_in.weight[:, :c_in] = unet.conv_in.weight
    new.conv_in.bias.copy_(unet.conv_in.bias)
    new.conv_out.weight.copy_(torch.cat([unet.conv_out.weight, unet.conv_out.weight], dim=0))
    new.conv_out.bias.copy_(torch.cat([unet.conv_out.bias, unet.conv_out.bias], dim=0))
    return new


@torch.no_grad()
def expand_unet_for_masked(unet: UNet2DConditionModel, latent_channels: int) -> UNet2DConditionModel:
    """Widen the stage-1 joint denoiser (2C in) into the stage-2 masked variant (4C + 2 in).

    As for inpainting models, the new channels (two masks and two masked latents) are
    zero-initialised, so the stage-2 model starts out computing exactly the stage-1 model.
    """
    c = latent_channels
    if unet.config.in_channels != 2 * c:
        raise ValueError(f"expected a joint denoiser with {2 * c} input channels, got {unet.config.in_channels}")
    new = _rebuild(unet, in_channels=4 * c + 2)
    new.conv_in.weight.zero_()
    new.conv_in.weight[:, : 2 * c] = unet.conv_in.weight
    new.conv_in.bias.copy_(unet.conv_in.bias)
    new.conv_out.load_state_dict(unet.conv_out.state_dict())
    return new


def masked_inputs(z_rgb: torch.Tensor, z_depth: torch.Tensor, m_rgb: torch.Tensor, m_depth: torch.Tensor) -> torch.Tensor:
    """The stage-2 conditioning channels [m_rgb | m_depth | masked RGB | masked depth]: [B, 2C + 2, h, w].

    Masks are [B, 1, h, w] at latent resolution (1 = generate, 0 = keep).
    """
    return torch.cat([m_rgb, m_depth, z_rgb * (1 - m_rgb), z_depth * (1 - m_depth)], dim=1)


def tiny_unet_config(sample_size: int = 16, cross_attention_dim: int = 32) -> dict:
    """An SD-1.5-layout UNet shrunk to run on a CPU in milliseconds (tests, the bundled model)."""
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=8,
    )


def tiny_vae_config(sample_size: int = 64) -> dict:
    """A small AutoencoderKL (4× downsampling, 4 latent channels) with the SD VAE's interface."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=1.0,
    )
