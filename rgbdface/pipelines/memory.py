"""Batch sizes from the memory at hand (as Marigold picks its batch from a table by resolution and dtype).

Peak memory per image of the two calls that dominate a pipeline, at 512 x 512 in 16-bit
weights, from `benchmarks/bench_memory.py` (activations measured on the CPU at smaller
sizes and scaled by pixel count; see benchmarks/results/memory.md). They scale with the
pixel count and the bytes per value. Not yet checked on a GPU.
"""

from __future__ import annotations

import torch

MIB = 2**20
# MiB per image at 512 px, 16-bit: (VAE decode, one SD-1.5-size denoiser call without gradients)
PER_IMAGE_MIB_512 = {"vae_decode": 1400, "unet": 330}
HEADROOM = 0.8  # share of the free memory a batch may take (the allocator fragments)
CPU_BATCH = {"vae_decode": 14, "unet": 1}  # on the CPU memory is rarely the limit; speed does not grow with batch


def per_image_bytes(kind: str, image_size: int, dtype: torch.dtype) -> int:
    """Estimated peak bytes per image of `kind` ('vae_decode' or 'unet') at `image_size` px in `dtype`."""
    scale = (image_size / 512) ** 2 * (torch.finfo(dtype).bits / 16)
    return int(PER_IMAGE_MIB_512[kind] * MIB * scale)


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None elsewhere)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def batch_size_for(kind: str, device, image_size: int, dtype: torch.dtype, cap: int = 64) -> int:
    """Images of `kind` that fit at once in the free memory of `device` (at least 1, at most `cap`)."""
    free = free_bytes(device)
    if free is None:
        return min(CPU_BATCH[kind], cap)
    return max(1, min(cap, int(free * HEADROOM) // per_image_bytes(kind, image_size, dtype)))
