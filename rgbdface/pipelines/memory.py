"""Batch sizes from the memory at hand (as Marigold picks its batch from a table by resolution and dtype).

Peak memory per image of the two calls that dominate a pipeline, at 512 x 512 in 16-bit
weights. They scale with the pixel count and the bytes per value. The figures are estimates
from the layer sizes (the SD VAE decoder holds several 128-channel maps of 512 x 512 at once),
kept on the safe side; `benchmarks/bench_memory.py` measures them on a CPU at small sizes
(benchmarks/results/memory.md) and a GPU run of benchmarks/gpu_check.sh checks them. Not yet
checked on a GPU.
"""

from __future__ import annotations

import weakref

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


# 16-bit weights of a depth-estimation model at 512 px (masked UNet + ReferenceNet + VAE), for a batch size
# chosen before the model is loaded
DEPTH_WEIGHTS_BYTES_512 = 2 * (2 * 859.5e6 + 83.7e6)


def batch_size_for(kind: str, device, image_size: int, dtype: torch.dtype, cap: int = 64, weights: bool = False) -> int:
    """Images of `kind` that fit at once in the free memory of `device` (at least 1, at most `cap`);
    `weights`: the depth model is not loaded yet, leave room for its weights."""
    free = free_bytes(device)
    if free is None:
        return min(CPU_BATCH[kind], cap)
    if weights:
        free -= int(DEPTH_WEIGHTS_BYTES_512 * torch.finfo(dtype).bits / 16)
    return max(1, min(cap, int(free * HEADROOM) // per_image_bytes(kind, image_size, dtype)))


class TensorMemory:
    """Bytes of tensor storage torch allocates on one device type while inside: live now and at peak.

    Every operator's outputs pass a dispatch mode that records each new storage, and a
    finalizer takes it off when torch frees it. Works on any device, so it stands in for
    torch.cuda.max_memory_allocated where torch keeps no allocator statistics (the CPU).
    Storages that existed before (the weights) are not counted.
    """

    def __init__(self, device_type: str = "cpu"):
        self.device_type, self.live, self.peak, self._seen = device_type, 0, 0, set()

    def _record(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type:
            return
        st = t.untyped_storage()
        key, nbytes = st.data_ptr(), st.nbytes()
        if key in self._seen or nbytes == 0:
            return
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.live

    def __enter__(self) -> "TensorMemory":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        memory = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                # views and in-place results share an input's storage: not a new allocation
                inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                          if isinstance(t, torch.Tensor) and t.device.type == memory.device_type}
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor) and t.device.type == memory.device_type \
                            and t.untyped_storage().data_ptr() not in inputs:
                        memory._record(t)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._mode.__exit__(*exc)
        return False
