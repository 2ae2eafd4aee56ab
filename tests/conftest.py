"""Shared fixtures: tiny seeded models built from config, real example portraits, CPU only, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: tiny modules gain nothing from more, and OpenMP threads spinning on a busy
# machine with few cores can slow them down a hundredfold.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def tiny_model():
    """A stage-0 tiny model (32×32 crops, 8×8 latents), seeded."""
    from rgbdface.models.builder import build_tiny

    return build_tiny(image_size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model.save_pretrained(path)
    return path


def make_sd15_folder(path: Path) -> Path:
    """A Stable-Diffusion-1.5-layout diffusers folder with tiny random weights, written from config."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from rgbdface.models.builder import SD_SCHEDULE
    from rgbdface.models.unet import tiny_unet_config, tiny_vae_config

    torch.manual_seed(0)
    UNet2DConditionModel.from_config(tiny_unet_config(sample_size=8, cross_attention_dim=32)).save_pretrained(path / "unet")
    AutoencoderKL.from_config(tiny_vae_config(32) | {"scaling_factor": 0.18215}).save_pretrained(path / "vae")
    DDPMScheduler.from_config(SD_SCHEDULE).save_pretrained(path / "scheduler")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77))
    text.save_pretrained(path / "text_encoder")
    tok_dir = path / "tokenizer"
    tok_dir.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "a</w>": 3, "!": 4}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77).save_pretrained(tok_dir)
    return path


@pytest.fixture(scope="session")
def sd15_dir(tmp_path_factory):
    return make_sd15_folder(tmp_path_factory.mktemp("sd15") / "base")


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def portrait_path() -> Path:
    """A real portrait shipped with the repository (scikit-image's astronaut, public domain)."""
    return EXAMPLES / "astronaut.jpg"


@pytest.fixture(scope="session")
def astronaut(portrait_path):
    from rgbdface.data.io import load_image

    return load_image(portrait_path)


@pytest.fixture(scope="session")
def portraits() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in {".jpg", ".png"})


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def portrait_dataset(tmp_path_factory, portrait_path):
    """A real prep-depth dataset (64 px crops) of one example portrait plus 2 studio renders."""
    from rgbdface.data.prep import PrepConfig, prepare_dataset

    root = tmp_path_factory.mktemp("data") / "astronaut"
    summary = prepare_dataset([portrait_path], root, PrepConfig(size=64, studio_views=2))
    assert not summary.failed
    return root


@pytest.fixture(scope="session")
def tiny_masked_model():
    """A stage-2 tiny model (32×32 crops) with the masked denoiser; untrained weights, seeded."""
    from rgbdface.models.builder import build_tiny

    m = build_tiny(image_size=32, seed=0)
    m.add_masked_denoiser()
    m.meta.stages = [0, 1, 2]
    return m


@pytest.fixture(scope="session")
def tiny_masked_model_dir(tmp_path_factory, tiny_masked_model):
    path = tmp_path_factory.mktemp("models") / "tiny-stage2"
    tiny_masked_model.save_pretrained(path)
    return path
