"""A denoiser UNet paired with its ReferenceNet through one `ReferenceBank`."""

from __future__ import annotations

import torch
from torch import nn

from rgbdface.models.reference import ReferenceBank, attach_reference


class RGBDDenoiser(nn.Module):
    """ε_θ([z_rgb, z_depth, …], z_ref, t): the expanded UNet conditioned on a ReferenceNet.

    Inference: `set_reference` once per reference, then call the module at every step; the
    reference features are reused. Training: pass `reference=` to the call, so that the
    ReferenceNet and the denoiser run in one forward (and one backward).
    """

    def __init__(self, unet, reference_unet, bank: ReferenceBank | None = None):
        super().__init__()
        self.unet = unet
        self.reference_unet = reference_unet
        self.bank = bank if bank is not None else ReferenceBank()
        attach_reference(unet, reference_unet, self.bank)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def set_reference(self, z_ref: torch.Tensor, context: torch.Tensor) -> None:
        """Run the ReferenceNet once on reference latents [B_ref, C, h, w] at timestep 0 and keep its features."""
        self.bank.clear()
        self.bank.writing = True
        try:
            t0 = torch.zeros(z_ref.shape[0], device=z_ref.device, dtype=torch.long)
            self.reference_unet(z_ref, t0, encoder_hidden_states=_batch(context, z_ref.shape[0]))
        finally:
            self.bank.writing = False

    def clear_reference(self) -> None:
        self.bank.clear()

    def forward(
        self,
        sample: torch.Tensor,  # [B, in_channels, h, w]
        timestep: torch.Tensor,  # [B] or scalar
        context: torch.Tensor,  # [1 or B, L, D]
        reference: torch.Tensor | None = None,  # [B_ref, C, h, w]: (re)compute reference features first
        keep: torch.Tensor | None = None,  # [B] bool: False drops the reference for that sample
        ref_index: torch.Tensor | None = None,  # [B] long: the reference each sample reads
    ) -> torch.Tensor:
        if reference is not None:
            self.set_reference(reference, context)
        self.bank.set_call(keep, ref_index, sample.device)
        try:
            return self.unet(sample, timestep, encoder_hidden_states=_batch(context, sample.shape[0])).sample
        finally:
            self.bank.set_call(None, None)


def _batch(context: torch.Tensor, b: int) -> torch.Tensor:
    return context.expand(b, -1, -1) if context.shape[0] == 1 else context
