"""Model loading for commands: the one loading core plus --device/--dtype resolution."""

from __future__ import annotations

from pathlib import Path

from rgbdface.cli.common import log, resolve_device
from rgbdface.utils import InputError, UsageError

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def load_for_command(model: Path | None, device: str = "auto", dtype: str = "auto", quiet: bool = False,
                     stage: int | set[int] | None = None):
    """Load `model` (or the bundled default) onto the chosen device, only the weights of `stage`'s task
    (a set: of those stages' tasks).

    dtype 'auto': float16 weights on CUDA (half the memory and no autocast re-casts), float32 elsewhere.
    """
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from rgbdface.models.model import load_model

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()

    dev = resolve_device(device)
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: expected auto, fp32, fp16 or bf16")
    if dtype == "auto":
        dtype = "fp16" if dev.startswith("cuda") else "fp32"
    torch_dtype = getattr(torch, DTYPES[dtype])
    if dev == "cpu" and torch_dtype == torch.float16:
        raise InputError("--dtype fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    m = load_model(model, device=dev, dtype=torch_dtype, stages=None if stage is None else {stage} if isinstance(stage, int) else set(stage))
    if dev.startswith("cuda"):  # the VAE codes as many images at once as the free memory takes (VAE slicing)
        from rgbdface.pipelines.memory import batch_size_for

        m.codec.slice_size = m.masked_codec.slice_size = batch_size_for("vae_decode", dev, m.meta.image_size, torch_dtype, cap=16)
    log(f"model: {model or 'bundled rgbdface-tiny'} (stages {m.meta.stages}, {m.meta.image_size}px) on {dev}", quiet)
    return m
