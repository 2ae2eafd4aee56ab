"""Joint RGB + depth generation conditioned on a reference portrait (paper Fig. 1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rgbdface.models.model import RGBDFaceModel
from rgbdface.pipelines.common import image_to_tensor, tensor_to_images
from rgbdface.pipelines.sampling import sample_latents


@dataclass
class RGBDSamples:
    """rgb:   uint8 [N, S, S, 3]
    depth: float32 [N, S, S], relative depth in [-1, 1], larger = farther
    valid: bool [N, S, S], where the decoded depth is not background (below the model's valid threshold)
    """

    rgb: np.ndarray
    depth: np.ndarray
    valid: np.ndarray


def check_inputs(reference: np.ndarray, num_samples: int, steps: int, guidance: float) -> None:
    if not isinstance(reference, np.ndarray) or reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[2] != 3:
        raise ValueError("reference must be a uint8 RGB array [H, W, 3]")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = off), got {guidance}")


@torch.no_grad()
def generate(
    model: RGBDFaceModel,
    reference: np.ndarray,
    num_samples: int = 1,
    steps: int = 25,
    guidance: float = 1.0,
    scheduler: str = "ddim",
    seed: int = 0,
    progress: bool = False,
) -> RGBDSamples:
    """Sample `num_samples` RGB + depth pairs of the person in `reference` (a face crop, uint8 RGB, framed
    with the model's margin: `crop_face(image, margin=model.meta.crop_margin)`)."""
    # 1. Check inputs
    check_inputs(reference, num_samples, steps, guidance)
    device, dtype = model.device, model.dtype
    generator = torch.Generator().manual_seed(seed)

    with model.autocast():
        # 2. Encode the reference (VAE)
        ref = image_to_tensor(reference, model.meta.image_size, device).to(dtype)  # [1, 3, S, S]
        z_ref = model.codec.encode_rgb(ref)  # [1, C, s, s]

        # 3. Denoise RGB and depth latents together (ReferenceNet once, expanded UNet per step)
        z_rgb, z_depth = sample_latents(
            model.joint, model.sampling_scheduler(scheduler), z_ref, model.context.to(dtype),
            num_per_reference=num_samples, steps=steps, guidance=guidance, generator=generator, progress=progress,
        )  # [N, C, s, s] each

        # 4. Decode (VAE): RGB, and depth as the mean of the 3 decoded channels
        rgb = model.codec.decode_rgb(z_rgb)  # [N, 3, S, S]
        depth = model.codec.decode_depth(z_depth)[:, 0].float()  # [N, S, S]

    valid = depth < model.meta.depth.valid_threshold
    return RGBDSamples(rgb=tensor_to_images(rgb), depth=depth.cpu().numpy(), valid=valid.cpu().numpy())
