"""Train the small latent codec of the tiny configuration (the bundled model's first step).

Real work uses the base model's VAE unchanged (SD-1.5). The tiny configuration has no
pretrained VAE, so one is trained on the same data the denoiser will see: RGB face crops
in [-1, 1] and their normalised depth maps replicated to three channels (the codec's own
depth encoding, rgbdface/models/codec.py). Loss: L1 + MSE reconstruction with a small KL
term, as latent-diffusion autoencoders are trained (without the perceptual and adversarial
terms, which need pretrained networks); optionally RGB crops in random colours (`colour_jitter`). The latent scaling factor is then set to
1 / std of the latents, as Stable Diffusion's 0.18215 was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class VAETrainConfig:
    steps: int = 3000  # optimiser steps
    batch_size: int = 16
    lr: float = 2e-4  # Adam, constant
    kl_weight: float = 1e-6  # keeps the posterior near N(0, I) without blurring
    depth_fraction: float = 0.5  # share of each batch that is depth maps
    crop: int | None = None  # train on random square crops of this size (a conv codec generalises to the full size)
    # share of RGB crops put through one random colour transform with its hues turned (black and white,
    # green or blue skin...): a codec that saw only a few portraits' colours otherwise maps every image to
    # them, and a denoiser on its latents cannot copy a reference's colours at all
    colour_jitter: float = 0.0
    # train the decoder only: the encoder, hence every latent and the scaling factor, stay as they are, so that
    # denoisers trained on this codec's latents keep working with the new decoder
    decoder_only: bool = False
    seed: int = 0


def train_vae(vae, rgb: torch.Tensor, depth: torch.Tensor, config: VAETrainConfig, progress=None):
    """Train `vae` in place on rgb [N, 3, S, S] and depth [M, 1, S, S] (both already in [-1, 1]).

    Returns the list of per-step losses. Sets `vae.config.scaling_factor` from the data.
    """
    g = torch.Generator().manual_seed(config.seed)
    colour_rng = np.random.default_rng(config.seed)  # its own stream: colour_jitter = 0 draws the same batches as before
    if config.decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=config.lr)
    n_depth = int(round(config.batch_size * config.depth_fraction))
    n_rgb = config.batch_size - n_depth
    losses = []
    vae.train()
    for step in range(config.steps):
        x = torch.cat([
            _colours(rgb[torch.randint(len(rgb), (n_rgb,), generator=g)], colour_rng, config.colour_jitter),
            depth[torch.randint(len(depth), (n_depth,), generator=g)].expand(-1, 3, -1, -1),
        ])
        x = _augment(x, g, config.crop)
        with torch.set_grad_enabled(not config.decoder_only):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample(generator=g)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        if not config.decoder_only:
            loss = loss + config.kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    vae.eval()
    vae.requires_grad_(True)
    if not config.decoder_only:
        set_scaling_factor(vae, torch.cat([rgb[:256], depth[:256].expand(-1, 3, -1, -1)]))
    return losses


def _colours(x: torch.Tensor, rng: np.random.Generator, p: float) -> torch.Tensor:
    """Each RGB image [B, 3, S, S] in [-1, 1], with probability `p`, through its own random colour transform
    (training/data.py's, hues turned)."""
    if p <= 0:
        return x
    from rgbdface.training.data import apply_colour, random_colour_matrix

    out = [apply_colour(img, random_colour_matrix(rng, hue=1.0)) if rng.random() < p else img for img in x]
    return torch.stack(out)


def _augment(x: torch.Tensor, g: torch.Generator, crop: int | None = None) -> torch.Tensor:
    """Random horizontal flips (faces are roughly symmetric), and one random crop per batch.

    Cropping cuts the cost per step by (S / crop)²; the codec is convolutional, so it
    applies to the full size unchanged.
    """
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if crop is not None and crop < x.shape[-1]:
        i, j = (int(v) for v in torch.randint(x.shape[-1] - crop + 1, (2,), generator=g))
        x = x[..., i : i + crop, j : j + crop]
    return x


@torch.no_grad()
def set_scaling_factor(vae, x: torch.Tensor) -> float:
    """Scale latents to unit variance: scaling_factor = 1 / std(posterior means)."""
    std = vae.encode(x).latent_dist.mean.std().item()
    sf = 1.0 / max(std, 1e-6)
    vae.register_to_config(scaling_factor=sf)
    return sf


def load_vae_data(dataset_dir, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB crops [N, 3, S, S] and normalised depth maps [N, 1, S, S] of a prep-depth dataset, in [-1, 1]."""
    import numpy as np

    from rgbdface.data.io import load_depth, load_image
    from rgbdface.data.manifest import check_files, load_manifest
    from rgbdface.models.codec import normalize_depth
    from rgbdface.pipelines.common import image_to_tensor, resize_map

    samples = load_manifest(dataset_dir)
    check_files(samples, ("rgb", "depth"), Path(dataset_dir))
    rgb, depth = [], []
    for s in samples:
        rgb.append(image_to_tensor(load_image(s.rgb), image_size))
        d = load_depth(s.depth)
        valid = resize_map(d > 0, (image_size, image_size), mode="nearest")
        d = resize_map(d, (image_size, image_size), mode="nearest")
        depth.append(normalize_depth(torch.from_numpy(np.where(valid, d, 0.0))[None, None]))
    return torch.cat(rgb), torch.cat(depth)
