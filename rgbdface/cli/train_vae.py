"""`rgbdface train-vae`: train the small latent codec of the tiny configuration."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, handle_errors, log, report
from rgbdface.cli.options import JsonOpt, ThreadsOpt, QuietOpt, SeedOpt
from rgbdface.utils import InputError, UsageError


@handle_errors
def train_vae_command(
    dataset: Annotated[Path, typer.Argument(help="A prep-depth dataset folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="VAE folder to write (diffusers AutoencoderKL layout).")],
    image_size: Annotated[int, typer.Option("--image-size", help="Training resolution (the model's crop size).")] = 64,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 3000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Images per step (half RGB, half depth).")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 2e-4,
    crop: Annotated[Optional[int], typer.Option("--crop", help="Train on random crops of this size (multiple of 8; faster, same codec).")] = None,
    colour_jitter: Annotated[float, typer.Option("--colour-jitter", min=0.0, max=1.0, help="Share of RGB crops shown in a random colour transform (black and white, turned hues), so that the codec keeps any colour rather than only those of the training portraits.")] = 0.0,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this codec: a VAE folder, or a model folder (its vae/).")] = None,
    decoder_only: Annotated[bool, typer.Option("--decoder-only", help="With --init: train the decoder only. The encoder, every latent and the scaling factor stay as they were, so a model trained on that codec's latents works unchanged with the new one (replace its vae/ folder), e.g. to decode colours the old decoder lost.")] = False,
    seed: SeedOpt = 0,
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a small AutoencoderKL (the tiny configuration's codec) on a dataset's RGB crops and depth maps.

    Real work keeps the base model's VAE (SD-1.5) and needs no such step.

    --json adds: steps, final_loss, scaling_factor."""
    from rgbdface.data.manifest import check_files, read_samples

    if crop is not None and (crop % 8 or not 8 <= crop <= image_size):
        raise UsageError(f"--crop {crop}: must be a multiple of 8 between 8 and --image-size {image_size}")
    if decoder_only and init is None:
        raise UsageError("--decoder-only trains the decoder of an existing codec; pass it with --init")
    if init is not None:
        init = init / "vae" if (init / "vae" / "config.json").is_file() else init
        if not (init / "config.json").is_file():
            raise InputError(f"--init {init}: no codec there (config.json); pass a VAE folder or a model folder with vae/")
    check_files(read_samples(dataset), ("rgb", "depth"), dataset)  # a missing, empty or broken dataset fails before torch is imported

    import torch
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    from rgbdface.models.unet import tiny_vae_config
    from rgbdface.training.vae import VAETrainConfig, load_vae_data, train_vae
    from rgbdface.utils import atomic_dir

    rgb, depth = load_vae_data(dataset, image_size)
    if len(rgb) == 0:
        raise InputError(f"{dataset}: the dataset has no samples; run `rgbdface prep-depth` first")
    log(f"training the codec on {len(rgb)} RGB crops and depth maps at {image_size}px", quiet)
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(init, torch_dtype=torch.float32, use_safetensors=True) if init is not None else AutoencoderKL.from_config(tiny_vae_config(image_size))
    live = sys.stderr.isatty()  # into a log file: one plain line every twentieth of the run instead of a bar
    bar = tqdm(total=steps, disable=quiet or not live, desc="train-vae", file=sys.stderr)
    every = max(steps // 20, 1)

    def progress(step, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if not live and not quiet and ((step + 1) % every == 0 or step + 1 == steps):
            print(f"train-vae: step {step + 1}/{steps} loss {loss:.4f}", file=sys.stderr, flush=True)

    losses = train_vae(vae, rgb, depth, VAETrainConfig(steps=steps, batch_size=batch_size, lr=lr, crop=crop,
                                                         colour_jitter=colour_jitter, decoder_only=decoder_only, seed=seed), progress)
    bar.close()
    with atomic_dir(output) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    report().wrote(output)
    report().add(steps=len(losses), final_loss=losses[-1], scaling_factor=vae.config.scaling_factor)
    log(f"wrote {output} (final loss {losses[-1]:.4f}, scaling factor {vae.config.scaling_factor:.4f})", quiet)


def register(app: typer.Typer) -> None:
    app.command("train-vae", cls=ReportingCommand, no_args_is_help=True)(train_vae_command)
