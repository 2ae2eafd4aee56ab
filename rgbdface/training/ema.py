"""Exponential moving average of the trained weights (kept in float32)."""

from __future__ import annotations

import torch


class EMA:
    """shadow ← decay · shadow + (1 − decay) · weight, after every optimizer step."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = {n: p.detach().float().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        self.shadow = {n: tensors[n].to(self.shadow[n].device).float().clone() for n in self.shadow}

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """The averaged weights into the trained parameters themselves (in place: no copy of the model)."""
        for n, p in self.params.items():
            p.copy_(self.shadow[n].to(p.dtype))
