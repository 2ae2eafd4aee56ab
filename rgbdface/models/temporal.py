"""Temporal attention and motion frames of stage 3 (paper §4.2, Fig. 2; supp. Fig. 9).

- Temporal modules: AnimateDiff motion modules (diffusers' `MotionAdapter`, so its weights
  load by name) sit where `UNetMotionModel` puts them: after each layer (resnet, +
  transformer in cross-attention blocks) of every down, mid and up block. They are forward
  hooks (`TemporalHook`) on those UNet modules and attend over the frame axis. Without
  AnimateDiff weights their `proj_out` is zero-initialised: identity at start.
- Motion frames: the last n generated frames of the previous clip go through the
  ReferenceNet (timestep 0); hooks on the ReferenceNet's modules at the same positions
  (`MotionRecordHook`) record their features, and each temporal module attends over
  [n motion frames | F clip frames], keeping only the clip's F frames after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from rgbdface.utils import exists

if TYPE_CHECKING:
    from rgbdface.models.motion import MotionConfig, MotionState


def temporal_positions(unet) -> list[tuple[str, nn.Module, str]]:
    """(UNet module path, module, adapter path) for every temporal module, in `UNetMotionModel`'s layout.

    After layer j of a block: its transformer in cross-attention blocks, else its resnet.
    """
    out = []

    def add(prefix, block, adapter_prefix):
        layers = block.attentions if hasattr(block, "attentions") and block.attentions is not None else block.resnets
        kind = "attentions" if layers is not getattr(block, "resnets", None) else "resnets"
        for j, m in enumerate(layers):
            out.append((f"{prefix}.{kind}.{j}", m, f"{adapter_prefix}.motion_modules.{j}"))

    for i, block in enumerate(unet.down_blocks):
        add(f"down_blocks.{i}", block, f"down_blocks.{i}")
    if unet.mid_block is not None and getattr(unet.mid_block, "attentions", None):
        out.append(("mid_block.attentions.0", unet.mid_block.attentions[0], "mid_block.motion_modules.0"))
    for i, block in enumerate(unet.up_blocks):
        add(f"up_blocks.{i}", block, f"up_blocks.{i}")
    return out


def default_motion_adapter(unet, config: MotionConfig):
    """An AnimateDiff `MotionAdapter` laid out for `unet`, proj_out zero (identity at start)."""
    from diffusers import MotionAdapter

    c = unet.config
    adapter = MotionAdapter(
        block_out_channels=tuple(c.block_out_channels),
        motion_layers_per_block=c.layers_per_block,
        motion_transformer_layers_per_block=1,
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=config.temporal_heads,
        motion_norm_num_groups=c.norm_num_groups,
        motion_max_seq_length=config.temporal_max_frames,
        use_motion_mid_block=True,
    )
    zero_temporal_outputs(adapter)
    return adapter


@torch.no_grad()
def zero_temporal_outputs(adapter) -> None:
    """Zero every motion module's proj_out: the residual temporal attention then returns its input."""
    for m in adapter.modules():
        if type(m).__name__ == "AnimateDiffTransformer3D":
            m.proj_out.weight.zero_()
            m.proj_out.bias.zero_()


def out_channels(m: nn.Module) -> int:
    return int(m.out_channels) if hasattr(m, "out_channels") and m.out_channels else int(m.in_channels)


class TemporalHook:
    """Forward hook after a denoiser layer: temporal self-attention over [motion frames | clip frames]."""

    def __init__(self, state: MotionState, name: str, module: nn.Module):
        self.state, self.name, self.module = state, name, module

    def __call__(self, layer, args, output):
        st = self.state
        if st.frames is None:
            return output
        x = output[0] if isinstance(output, tuple) else output  # [(B F), c, h, w]
        f = st.frames
        x = rearrange(x, "(b f) c h w -> b f c h w", f=f)
        n = 0
        motion = st.motion.get(self.name)
        if exists(motion):
            m = rearrange(motion, "(b n) c h w -> b n c h w", n=st.motion_frames).to(x.dtype)
            if m.shape[0] != x.shape[0]:  # CFG halves share the motion frames
                m = m.repeat(x.shape[0] // m.shape[0], 1, 1, 1, 1)
            x = torch.cat([m, x], dim=1)  # [B, n + F, c, h, w]
            n = m.shape[1]
        x = rearrange(x, "b f c h w -> (b f) c h w")
        if st.checkpoint and torch.is_grad_enabled():
            # Hooks on a block's transformers run outside diffusers' per-block checkpointing, and
            # a clip's [n + F] frames at full resolution are most of stage 3's activations.
            y = checkpoint(self.module, x, num_frames=n + f, use_reentrant=False)
        else:
            y = self.module(x, num_frames=n + f)
        y = rearrange(y, "(b f) c h w -> b f c h w", f=n + f)[:, n:]  # drop the motion frames
        y = rearrange(y, "b f c h w -> (b f) c h w")
        return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y


class MotionRecordHook:
    """Forward hook on a ReferenceNet layer: store its output for the matching temporal module."""

    def __init__(self, state: MotionState, name: str):
        self.state, self.name = state, name

    def __call__(self, layer, args, output):
        if self.state.recording:
            self.state.motion[self.name] = output[0] if isinstance(output, tuple) else output
        return None
