"""Counting host-device synchronisations on a CPU.

On a GPU, reading a device tensor's value on the host (`bool(t)`, `t.item()`, `float(t)`,
`t.tolist()`, `t.cpu()`, `t.numpy()`) waits for all queued work. `SyncCounter` is a
tensor subclass that stands for such a device tensor: every tensor computed from it is
one too, and each read-back is counted. A CPU run then shows how often code would stall
a GPU.
"""

from __future__ import annotations

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
