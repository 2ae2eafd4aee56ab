"""The latent codec: the base model's VAE, used for RGB and for depth (paper §3.2, DESIGN §1).

RGB is encoded from [-1, 1]. Depth is normalised per image to [-1, 1] over its valid
pixels with robust 2 % / 98 % quantiles (as Marigold does; larger = farther), invalid
pixels are set to the far value (+1), the single channel is replicated to three and
encoded; decoding takes the mean of the three output channels. Encoding uses the
posterior mean, so it is deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

FAR = 1.0  # normalised value of the farthest depth; invalid pixels are set to it


def normalize_depth(depth: torch.Tensor, valid: torch.Tensor | None = None, q: float = 0.02) -> torch.Tensor:
    """Per-image robust normalisation of depth [B, 1, H, W] (larger = farther) to [-1, 1].

    `valid` [B, 1, H, W] bool marks pixels with depth; default: depth > 0.
    An image with no valid pixel becomes all far.
    """
    if depth.ndim == 3:
        depth = depth[:, None]
    valid = depth > 0 if valid is None else valid.reshape(depth.shape).bool()
    out = torch.full_like(depth, FAR, dtype=torch.float32)
    for i in range(depth.shape[0]):
        v = depth[i][valid[i]].float()
        if v.numel() == 0:
            continue
        lo, hi = torch.quantile(v, torch.tensor([q, 1.0 - q], device=v.device))
        scale = torch.clamp(hi - lo, min=1e-6)
        d = (depth[i].float() - lo) / scale * 2.0 - 1.0
        out[i] = torch.where(valid[i], d.clamp(-1.0, 1.0), torch.full_like(d, FAR))
    return out


class LatentCodec(nn.Module):
    """Encode and decode RGB and depth with one `diffusers.AutoencoderKL`."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.vae.config.shift_factor or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] → scaled latent [B, C, H/f, W/f] (posterior mean), `slice_size` images at a time."""
        parts = [self.vae.encode(chunk.to(self.vae.dtype)).latent_dist.mean for chunk in self._slices(x)]
        return (torch.cat(parts) - self.shift_factor) * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B, C, h, w] → [B, 3, H, W], clamped to [-1, 1], `slice_size` latents at a time."""
        z = z / self.scaling_factor + self.shift_factor
        return torch.cat([self.vae.decode(chunk.to(self.vae.dtype)).sample.clamp(-1.0, 1.0) for chunk in self._slices(z)])

    # Images the VAE takes at once (None: the whole batch). Its activations at full resolution
    # dominate a pipeline's peak memory, and each image is coded on its own, so slicing changes
    # nothing but the memory (as diffusers' enable_slicing).
    slice_size: int | None = None

    def _slices(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,) if not self.slice_size or x.shape[0] <= self.slice_size else x.split(self.slice_size)

    def encode_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.encode(rgb)

    def encode_depth(self, depth: torch.Tensor, valid: torch.Tensor | None = None, normalized: bool = False) -> torch.Tensor:
        """Depth [B, 1, H, W] (raw, larger = farther; or already in [-1, 1] if `normalized`) → latent."""
        d = depth if normalized else normalize_depth(depth, valid)
        if d.ndim == 3:
            d = d[:, None]
        return self.encode(d.expand(-1, 3, -1, -1))  # [B, 3, H, W]: the depth replicated to RGB

    def decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def decode_depth(self, z: torch.Tensor) -> torch.Tensor:
        """Latent → relative depth [B, 1, H, W] in [-1, 1] (larger = farther): the mean of the 3 channels."""
        return self.decode(z).mean(dim=1, keepdim=True)
