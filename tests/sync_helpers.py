"""Counting host-device synchronisations on a CPU.

On a GPU, reading a device tensor's value on the host (`bool(t)`, `t.item()`, `float(t)`,
`t.tolist()`, `t.cpu()`, `t.numpy()`) waits for all queued work. `SyncCounter` is a
tensor subclass that stands for such a device tensor: every tensor computed from it is
one too, and each read-back is counted. A CPU run then shows how often code would stall
a GPU.
"""

from __future__ import annotations

import weakref

import torch

READ_BACKS = {torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__index__}


class SyncCounter(torch.Tensor):
    """A tensor whose value reads on the host are counted in `SyncCounter.count`."""

    count = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in READ_BACKS:
            SyncCounter.count += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def on_fake_device(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(SyncCounter)



class TensorMemory:
    """Bytes of tensor storage that torch allocates while inside, live and at peak, on one device type.

    Every operator's outputs go through a dispatch mode that records each new storage and a
    finalizer that takes it off when torch frees it: torch.cuda.max_memory_allocated's
    counterpart for a CPU, where torch keeps no allocator statistics.
    """

    def __init__(self, device: str = "cpu"):
        self.device, self.live, self.peak, self._seen = device, 0, 0, set()

    def _record(self, t: torch.Tensor) -> None:
        if t.device.type != self.device or t.is_meta:
            return
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in self._seen or st.nbytes() == 0:
            return
        self._seen.add(key)
        self.live += st.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, key, st.nbytes())

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.live

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        memory = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        memory._record(t)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False
