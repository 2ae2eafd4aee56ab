"""Shared fixtures: the real portraits shipped under examples/."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def astronaut():
    from rgbdface.data.io import load_image

    return load_image(EXAMPLES / "astronaut.jpg")


@pytest.fixture(scope="session")
def portraits() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in {".jpg", ".png"})
