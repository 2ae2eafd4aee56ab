"""The paper's channel expansion (§3.3): zero-initialised inputs, duplicated outputs."""

import copy

import torch
from diffusers import UNet2DConditionModel

from rgbdface.models.unet import expand_unet_for_joint, expand_unet_for_masked, masked_inputs, tiny_unet_config


def _base():
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(tiny_unet_config(sample_size=8)).eval()
    # Random (non-zero) output layer, as in a pretrained model; diffusers' init would zero nothing here,
    # but make sure the duplication is tested on distinct values.
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.1)
        unet.conv_out.bias.normal_(0, 0.1)
    return unet


@torch.no_grad()
def test_joint_expansion_reproduces_base_prediction_in_both_halves():
    base = _base()
    joint = expand_unet_for_joint(copy.deepcopy(base)).eval()
    assert joint.config.in_channels == 8 and joint.config.out_channels == 8
    z_rgb, z_depth = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t, ctx = torch.tensor([10, 500]), torch.randn(2, 8, 32)
    expected = base(z_rgb, t, encoder_hidden_states=ctx).sample
    out = joint(torch.cat([z_rgb, z_depth], 1), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(out[:, :4], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 4:], expected, rtol=0, atol=1e-5)
    # The depth latent has no influence yet: zero-initialised input channels.
    out2 = joint(torch.cat([z_rgb, torch.randn_like(z_depth)], 1), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


@torch.no_grad()
def test_joint_expansion_keeps_every_other_weight():
    base = _base()
    joint = expand_unet_for_joint(copy.deepcopy(base))
    sb, sj = base.state_dict(), joint.state_dict()
    for k, v in sb.items():
        if not k.startswith(("conv_in.", "conv_out.")):
            assert torch.equal(v, sj[k]), k
    assert torch.equal(sj["conv_in.weight"][:, :4], sb["conv_in.weight"])
    assert not sj["conv_in.weight"][:, 4:].any()
    assert torch.equal(sj["conv_out.weight"][4:], sb["conv_out.weight"])
    assert torch.equal(sj["conv_out.bias"][:4], sb["conv_out.bias"])


@torch.no_grad()
def test_masked_expansion_starts_as_the_joint_model():
    joint = expand_unet_for_joint(_base()).eval()
    # Give the joint model's depth input channels some weight, as after stage-1 training.
    joint.conv_in.weight[:, 4:].normal_(0, 0.1)
    masked = expand_unet_for_masked(copy.deepcopy(joint), latent_channels=4).eval()
    assert masked.config.in_channels == 4 * 4 + 2
    z = torch.randn(1, 8, 8, 8)
    t, ctx = torch.tensor([100]), torch.randn(1, 8, 32)
    cond = masked_inputs(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8))
    assert cond.shape == (1, 10, 8, 8)
    expected = joint(z, t, encoder_hidden_states=ctx).sample
    out = masked(torch.cat([z, cond], 1), t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_masked_inputs_zero_what_is_generated():
    z_rgb, z_depth = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    m_rgb, m_depth = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)  # image → depth
    cond = masked_inputs(z_rgb, z_depth, m_rgb, m_depth)
    assert torch.equal(cond[:, 0], m_rgb[:, 0]) and torch.equal(cond[:, 1], m_depth[:, 0])
    assert torch.equal(cond[:, 2:6], z_rgb)  # RGB kept
    assert not cond[:, 6:].any()  # depth to be generated: hidden
