"""Sample grids written during training: one row per reference, reference | RGB | depth | target RGB | target depth.

Stage 1 samples RGB and depth jointly; stage 2 shows image→depth (the target RGB kept,
depth generated). The samples come from rgbdface.pipelines.sampling with a fixed seed
and fixed references, so successive grids show the training progress alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rgbdface.data.io import colorize_depth, save_image
from rgbdface.pipelines.common import tensor_to_images
from rgbdface.pipelines.sampling import Known, sample_latents


@torch.no_grad()
def sample_grid(objective, batch: dict, steps: int, seed: int) -> np.ndarray:
    """uint8 [K·S, 5·S, 3] for the K samples of `batch` (a collated stage-1/2 batch)."""
    model = objective.model
    den = objective.denoiser
    dev, c = model.device, model.meta.latent_channels
    was_training = [m.training for m in objective.trainable_modules()]
    for m in objective.trainable_modules():
        m.eval()
    try:
        # 1. Encode references (and, for image→depth, the known RGB) with the VAE
        z_ref = model.codec.encode_rgb(batch["reference"].to(dev))  # [K, C, h, w]
        known = None
        if den.in_channels == 4 * c + 2:
            z_rgb = model.codec.encode_rgb(batch["rgb"].to(dev))
            k, h, w = z_rgb.shape[0], *z_rgb.shape[-2:]
            known = Known(rgb=z_rgb, m_rgb=torch.zeros(k, 1, h, w, device=dev), m_depth=torch.ones(k, 1, h, w, device=dev),
                          clean=model.meta.known_clean)
        # 2. Denoise (ReferenceNet once, the denoiser per step; DDIM)
        zr, zd = sample_latents(den, model.sampling_scheduler("ddim"), z_ref, model.context, steps=steps,
                                generator=torch.Generator().manual_seed(seed), known=known)
        # 3. Decode and lay out
        rgb = tensor_to_images(model.codec.decode_rgb(zr))  # [K, S, S, 3]
        depth = model.codec.decode_depth(zd)[:, 0].float().cpu().numpy()  # [K, S, S] in [-1, 1]
    finally:
        den.clear_reference()
        for m, t in zip(objective.trainable_modules(), was_training):
            m.train(t)
    thr = model.meta.depth.valid_threshold
    rows = []
    for i in range(rgb.shape[0]):
        gt_depth = batch["depth"][i, 0].numpy()
        rows.append(np.concatenate([
            tensor_to_images(batch["reference"][i:i + 1])[0], rgb[i], colorize_depth(depth[i], depth[i] < thr),
            tensor_to_images(batch["rgb"][i:i + 1])[0], colorize_depth(gt_depth, gt_depth > 0),
        ], axis=1))
    return np.concatenate(rows, axis=0)


def write_grid(path: Path, grid: np.ndarray) -> Path:
    return save_image(path, grid)
