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


def guided(eps: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: predictions [unconditional | conditional] → ε_u + w · (ε_c − ε_u), half the batch."""
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


@dataclass
class Known:
    """What is kept rather than generated, at latent resolution.

    rgb / depth: known latents [B, C, h, w] (or None); m_rgb / m_depth: masks [B, 1, h, w]
    or a number for the whole latent, 1 = generate, 0 = keep (None = generate everywhere).
    B is the number of samples, 1 (shared by all), or the number of references (each
    reference's latent serves its `num_per_reference` consecutive samples).
    """

    rgb: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    m_rgb: torch.Tensor | float | None = None
    m_depth: torch.Tensor | float | None = None
    clean: bool = False  # kept cells enter the noisy slots as the clean latent (the model's meta.known_clean)


def _per_sample(x: torch.Tensor, b: int, num_per_reference: int, name: str) -> torch.Tensor:
    """[1 | B_ref | B, ...] → [B, ...]: shared, one per reference (repeated for its samples), or per sample."""
    if x.shape[0] == b:
        return x
    if x.shape[0] == 1:
        return x.expand(b, *x.shape[1:])
    if x.shape[0] * num_per_reference == b:
        return x.repeat_interleave(num_per_reference, dim=0)
    raise ValueError(f"known {name} has batch {x.shape[0]}; expected 1, the number of references or {b}")


def _generators(generator, num_refs: int) -> list[torch.Generator | None]:
    """One generator per reference: a list is taken as given, a single one (or None) is shared."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != num_refs:
            raise ValueError(f"got {len(generator)} generators for {num_refs} references")
        return list(generator)
    return [generator] * num_refs


@torch.no_grad()
def sample_latents(
    denoiser: RGBDDenoiser,
    scheduler,
    z_ref: torch.Tensor,  # [B_ref, C, h, w] reference latents
    context: torch.Tensor,  # [1, L, D]
    num_per_reference: int = 1,
    steps: int = 25,
    guidance: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    known: Known | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise [z_rgb, z_depth] from Gaussian noise; returns (z_rgb, z_depth), each [B, C, h, w].

    With a masked (stage-2) denoiser, `known` gives the kept latents and masks; kept regions
    are fed as the forward-diffused known latent at each step, or as the clean known latent
    with `known.clean` (each as the model was trained), and restored exactly at the end.

    `generator` may be a list with one generator per reference: each reference's samples
    then draw all their noise from their own generator, so a reference gets the same
    samples whatever else shares the batch (batched inference, sharding).
    """
    device, dtype = z_ref.device, z_ref.dtype
    c = z_ref.shape[1]
    b = z_ref.shape[0] * num_per_reference
    h, w = z_ref.shape[-2:]
    masked = denoiser.in_channels == 4 * c + 2
    known = known or Known()

    # 1. Masks and known latents (masked denoiser only)
    def mask(m, name):
        if m is None or isinstance(m, (int, float)):
            return torch.full((b, 1, h, w), 1.0 if m is None else float(m), device=device, dtype=dtype)
        return _per_sample(m.to(device, dtype), b, num_per_reference, name)

    def latent(z, name):
        if z is None:
            return torch.zeros(b, c, h, w, device=device, dtype=dtype)
        return _per_sample(z.to(device, dtype), b, num_per_reference, name)

    m_rgb, m_depth = mask(known.m_rgb, "m_rgb"), mask(known.m_depth, "m_depth")  # [B, 1, h, w]
    k_rgb, k_depth = latent(known.rgb, "rgb"), latent(known.depth, "depth")  # [B, C, h, w]
    if not masked and (known.rgb is not None or known.depth is not None):
        raise ValueError("known latents need a masked (stage-2) denoiser")
    cond = masked_inputs(k_rgb, k_depth, m_rgb, m_depth) if masked else None  # [B, 2C + 2, h, w]
    m_full = torch.cat([m_rgb.expand(-1, c, -1, -1), m_depth.expand(-1, c, -1, -1)], dim=1)  # [B, 2C, h, w]
    z_known = torch.cat([k_rgb, k_depth], dim=1)

    # 2. Reference features, computed once and reused at every step (ReferenceNet)
    denoiser.set_reference(z_ref, context)

    # 3. Initial noise, and the fixed noise that diffuses the known latents
    scheduler.set_timesteps(steps, device=device)
    gens = _generators(generator, z_ref.shape[0])
    shape = (num_per_reference, 2 * c, h, w)
    noise = [(torch.randn(shape, generator=g, dtype=torch.float32), torch.randn(shape, generator=g, dtype=torch.float32))
             for g in gens]  # per reference: (initial noise, noise that diffuses the known latents)
    latents = torch.cat([n[0] for n in noise]).to(device, dtype) * scheduler.init_noise_sigma  # [B, 2C, h, w]
    known_noise = torch.cat([n[1] for n in noise]).to(device, dtype)
    step_generator = generator if not isinstance(generator, (list, tuple)) else [g for g in gens for _ in range(num_per_reference)]
    # Without CFG each reference serves its consecutive samples, the bank's default (no index to gather by).
    ref_index = keep = None
    if guidance != 1.0:  # CFG: [unconditional | conditional] halves of one batch
        keep = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])  # on the CPU: no sync per step
        ref_index = torch.arange(b, device=device) // num_per_reference  # [B]: sample → its reference
        ref_index = torch.cat([ref_index, ref_index])

    # 4. Denoising loop (expanded UNet)
    try:
        for t in tqdm(scheduler.timesteps, disable=not progress, desc="denoising", leave=False):
            if masked:
                noised_known = (scheduler.add_noise(z_known, known_noise, t.reshape(1))
                                if hasattr(scheduler, "add_noise") and not known.clean else z_known)
                latents = m_full * latents + (1 - m_full) * noised_known
            x = scheduler.scale_model_input(latents, t)
            if masked:
                x = torch.cat([x, cond], dim=1)  # [B, 4C + 2, h, w]
            if keep is not None:
                x = torch.cat([x, x])
            eps = denoiser(x, t.expand(x.shape[0]), context, keep=keep, ref_index=ref_index)  # [B(×2), 2C, h, w]
            if keep is not None:
                eps = guided(eps, guidance)
            latents = scheduler.step(eps, t, latents, generator=step_generator).prev_sample
    finally:
        denoiser.clear_reference()
    if masked:
        latents = m_full * latents + (1 - m_full) * z_known
    return latents[:, :c], latents[:, c:]
