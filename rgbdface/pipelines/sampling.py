"""The sampling loop shared by every task: joint generation and channel-wise inpainting.

Noise comes only from a seeded `torch.Generator` (on the CPU, so a seed gives the same
samples on any device). Classifier-free guidance is on the reference: the unconditional
branch drops the reference features (paper §3.2 with reference dropout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rgbdface.models.denoiser import RGBDDenoiser
from rgbdface.models.unet import masked_inputs


@dataclass
class Known:
    """What is kept rather than generated, at latent resolution.

    rgb / depth: known latents [B, C, h, w] (or None); m_rgb / m_depth: masks [B, 1, h, w],
    1 = generate, 0 = keep (None = generate everywhere).
    """

    rgb: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    m_rgb: torch.Tensor | None = None
    m_depth: torch.Tensor | None = None


@torch.no_grad()
def sample_latents(
    denoiser: RGBDDenoiser,
    scheduler,
    z_ref: torch.Tensor,  # [B_ref, C, h, w] reference latents
    context: torch.Tensor,  # [1, L, D]
    num_per_reference: int = 1,
    steps: int = 25,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    known: Known | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise [z_rgb, z_depth] from Gaussian noise; returns (z_rgb, z_depth), each [B, C, h, w].

    With a masked (stage-2) denoiser, `known` gives the kept latents and masks; kept regions
    are fed as the forward-diffused known latent at each step (as in training) and restored
    exactly at the end.
    """
    device, dtype = z_ref.device, z_ref.dtype
    c = z_ref.shape[1]
    b = z_ref.shape[0] * num_per_reference
    h, w = z_ref.shape[-2:]
    masked = denoiser.in_channels == 4 * c + 2
    known = known or Known()

    # 1. Masks and known latents (masked denoiser only)
    ones = torch.ones(b, 1, h, w, device=device, dtype=dtype)
    m_rgb = ones if known.m_rgb is None else known.m_rgb.to(device, dtype).expand(b, -1, -1, -1)
    m_depth = ones if known.m_depth is None else known.m_depth.to(device, dtype).expand(b, -1, -1, -1)
    k_rgb = torch.zeros(b, c, h, w, device=device, dtype=dtype) if known.rgb is None else known.rgb.to(device, dtype).expand(b, -1, -1, -1)
    k_depth = torch.zeros(b, c, h, w, device=device, dtype=dtype) if known.depth is None else known.depth.to(device, dtype).expand(b, -1, -1, -1)
    if not masked and (known.rgb is not None or known.depth is not None):
        raise ValueError("known latents need a masked (stage-2) denoiser")
    cond = masked_inputs(k_rgb, k_depth, m_rgb, m_depth) if masked else None  # [B, 2C + 2, h, w]
    m_full = torch.cat([m_rgb.expand(-1, c, -1, -1), m_depth.expand(-1, c, -1, -1)], dim=1)  # [B, 2C, h, w]
    z_known = torch.cat([k_rgb, k_depth], dim=1)

    # 2. Reference features, computed once and reused at every step (ReferenceNet)
    denoiser.set_reference(z_ref, context)

    # 3. Initial noise, and the fixed noise that diffuses the known latents
    scheduler.set_timesteps(steps, device=device)
    latents = torch.randn((b, 2 * c, h, w), generator=generator, dtype=torch.float32).to(device, dtype)
    latents = latents * scheduler.init_noise_sigma
    known_noise = torch.randn((b, 2 * c, h, w), generator=generator, dtype=torch.float32).to(device, dtype)
    ref_index = torch.arange(b, device=device) // num_per_reference  # [B]: sample → its reference
    keep = None
    if guidance != 1.0:  # CFG: [unconditional | conditional] halves of one batch
        keep = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)
        ref_index = torch.cat([ref_index, ref_index])

    # 4. Denoising loop (expanded UNet)
    try:
        for t in tqdm(scheduler.timesteps, disable=not progress, desc="denoising", leave=False):
            if masked:
                noised_known = scheduler.add_noise(z_known, known_noise, t.reshape(1)) if hasattr(scheduler, "add_noise") else z_known
                latents = m_full * latents + (1 - m_full) * noised_known
            x = scheduler.scale_model_input(latents, t)
            if masked:
                x = torch.cat([x, cond], dim=1)  # [B, 4C + 2, h, w]
            if keep is not None:
                x = torch.cat([x, x])
            eps = denoiser(x, t.expand(x.shape[0]), context, keep=keep, ref_index=ref_index)  # [B(×2), 2C, h, w]
            if keep is not None:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
    finally:
        denoiser.clear_reference()
    if masked:
        latents = m_full * latents + (1 - m_full) * z_known
    return latents[:, :c], latents[:, c:]
