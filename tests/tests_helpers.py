"""Inputs built from the shipped portraits, and loaders of the project's scripts, shared by several test modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def two_faces(examples_dir: Path) -> np.ndarray:
    """The astronaut (512 px) beside Grace Hopper at 320 px high: two faces of different sizes."""
    import cv2

    from rgbdface.data.io import load_image

    hopper = load_image(examples_dir / "grace_hopper.jpg")
    small = cv2.resize(hopper, (320 * hopper.shape[1] // hopper.shape[0], 320), interpolation=cv2.INTER_AREA)
    canvas = np.full((600, 1000, 3), 200, np.uint8)
    canvas[:512, :512] = load_image(examples_dir / "astronaut.jpg")
    canvas[50 : 50 + small.shape[0], 530 : 530 + small.shape[1]] = small
    return canvas


def gt_map(seed, shape=(24, 20)):
    """A 16-bit ground truth around 5000 (0.5 m in 0.1 mm) with an invalid border."""
    rng = np.random.default_rng(seed)
    g = rng.integers(4800, 5600, shape).astype(np.uint16)
    g[0], g[:, 0] = 0, 0
    return g


def load_script(path: Path, name: str | None = None):
    """A script of benchmarks/ or examples/ imported as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name or Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
