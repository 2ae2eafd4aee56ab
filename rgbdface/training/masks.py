"""Asymmetric stage-2 masks (paper §4.1, supplement §7.2): one kind drawn per sample.

Masks are at latent resolution, 1 = generate, 0 = keep (as rgbdface.models.unet.masked_inputs):

    joint           m_rgb = 1, m_depth = 1    both generated: joint generation stays possible
    image→depth     m_rgb = 0, m_depth = 1    depth estimation from a known image
    depth→image     m_rgb = 1, m_depth = 0    an image for a known (e.g. edited) depth
    boxes           a random rectangle to generate in one domain (or both), the rest kept:
                    spatial inpainting, as for local depth edits
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("joint", "image_to_depth", "depth_to_image", "boxes")


@dataclass
class MaskSampler:
    p_joint: float
    p_image_to_depth: float
    p_depth_to_image: float
    p_boxes: float
    box_min: float = 0.25
    box_max: float = 0.75

    @classmethod
    def from_config(cls, cfg) -> "MaskSampler":
        return cls(cfg.p_joint, cfg.p_image_to_depth, cfg.p_depth_to_image, cfg.p_boxes, cfg.box_min, cfg.box_max)

    @property
    def probabilities(self) -> np.ndarray:
        p = np.array([self.p_joint, self.p_image_to_depth, self.p_depth_to_image, self.p_boxes], dtype=np.float64)
        return p / p.sum()

    def kind(self, rng: np.random.Generator) -> str:
        return KINDS[int(rng.choice(len(KINDS), p=self.probabilities))]

    def _box(self, rng: np.random.Generator, size: int) -> torch.Tensor:
        lo, hi = max(1, round(self.box_min * size)), max(1, round(self.box_max * size))
        h, w = (int(rng.integers(lo, hi + 1)) for _ in range(2))
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        m = torch.zeros(1, size, size)
        m[:, y:y + h, x:x + w] = 1.0
        return m

    def __call__(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_rgb, m_depth), each [1, size, size] float {0, 1}."""
        ones, zeros = torch.ones(1, size, size), torch.zeros(1, size, size)
        kind = self.kind(rng)
        if kind == "joint":
            return ones, ones.clone()
        if kind == "image_to_depth":
            return zeros, ones
        if kind == "depth_to_image":
            return ones, zeros
        # boxes: which domains get a hole (the other kept whole, or generated whole)
        which = int(rng.integers(3))  # 0: depth box, RGB kept; 1: RGB box, depth kept; 2: one box in both
        box = self._box(rng, size)
        if which == 0:
            return zeros, box
        if which == 1:
            return box, zeros
        return box, box.clone()
