"""Image ↔ tensor conversions shared by the pipelines."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def image_to_tensor(img: np.ndarray, size: int, device="cpu") -> torch.Tensor:
    """uint8 RGB [H, W, 3] → [1, 3, size, size] in [-1, 1] (antialiased resize)."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.to(device)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3]."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def resize_map(x: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize a [H, W] float map (or bool, with mode='nearest') to (h, w)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    kw = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    out = F.interpolate(t, size=size, mode=mode, **kw)[0, 0].numpy()
    return out > 0.5 if x.dtype == bool else out
