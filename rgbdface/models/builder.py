"""Stage 0: build an untrained joint model from a base model (SD-1.5 layout) or from the tiny config."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from rgbdface.models.folder import PREDICTION_TYPES
from rgbdface.models.model import ModelMeta, RGBDFaceModel
from rgbdface.models.unet import expand_unet_for_joint, tiny_unet_config, tiny_vae_config
from rgbdface.utils import InputError

# The noise schedule of Stable Diffusion 1.x, used when a base folder has none (the tiny config).
SD_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)

SD15_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _schedule(config: dict, prediction_type: str | None, zero_terminal_snr: bool = False) -> dict:
    """The training schedule, with the denoiser's output type set (None keeps the base model's).

    `epsilon` is the paper's eq. (5); `v_prediction` (the velocity sqrt(a)·eps − sqrt(1−a)·z0)
    supervises the clean latent at high noise too, which small models trained briefly need
    to read depth from the image rather than return an average face from pure noise.
    `zero_terminal_snr` rescales the betas so that t = T − 1 is pure noise (diffusers'
    `rescale_betas_zero_snr`): with SD's schedule √ᾱ is still 0.07 there, so the image's mean
    colour shows through the noise at every training step, the model learns to read it from
    the noise, and at sampling the seed picks the colours rather than the reference. It needs
    `v_prediction` (at ᾱ = 0 the noise says nothing of the image).
    """
    out = dict(config)
    if prediction_type is not None:
        if prediction_type not in PREDICTION_TYPES:
            raise InputError(f"--prediction-type {prediction_type}: use one of {', '.join(PREDICTION_TYPES)}")
        out["prediction_type"] = prediction_type
    if zero_terminal_snr:
        if out.get("prediction_type", "epsilon") != "v_prediction":
            raise InputError("--zero-terminal-snr needs --prediction-type v_prediction (at pure noise the noise tells nothing of the image)")
        out["rescale_betas_zero_snr"] = True
    return out


def _joint_from_base(vae, base_unet, context, scheduler_config, image_size: int, base: str) -> RGBDFaceModel:
    # The ReferenceNet starts as an exact copy of the base UNet (RGB in), the denoiser as its widened copy.
    reference_unet = copy.deepcopy(base_unet)
    unet = expand_unet_for_joint(base_unet)
    meta = ModelMeta(stages=[0], image_size=image_size, latent_channels=int(vae.config.latent_channels), base=base)
    return RGBDFaceModel(vae, unet, reference_unet, context, meta, scheduler_config)


def build_tiny(image_size: int = 64, seed: int = 0, vae_dir: str | Path | None = None,
               prediction_type: str | None = None, zero_terminal_snr: bool = False) -> RGBDFaceModel:
    """A randomly initialised model of the SD-1.5 architecture, shrunk to run on a CPU in seconds.

    It has no text encoder: its cross-attention context is a fixed seeded Gaussian
    [1, 8, 32], stored like the empty-prompt embedding of a real base model. `vae_dir`
    takes a trained codec (`rgbdface train-vae`) instead of a random one; `prediction_type`
    defaults to `epsilon`, as Stable Diffusion 1.x; `zero_terminal_snr` see `_schedule`.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if image_size % 16:
        raise InputError(f"--image-size {image_size}: must be a multiple of 16")
    g = torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(tiny_vae_config(image_size))
    if vae_dir is not None:
        if not (Path(vae_dir) / "config.json").is_file():
            raise InputError(f"--vae {vae_dir}: not an AutoencoderKL folder (no config.json)")
        vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True, local_files_only=True)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    base_unet = UNet2DConditionModel.from_config(tiny_unet_config(sample_size=image_size // factor))
    context = torch.randn(1, 8, base_unet.config.cross_attention_dim, generator=g)
    model = _joint_from_base(vae, base_unet, context, _schedule(SD_SCHEDULE, prediction_type, zero_terminal_snr), image_size, base="tiny")
    model.meta.codec_trained = vae_dir is not None
    return model.eval()


@torch.no_grad()
def empty_prompt_embedding(tokenizer, text_encoder) -> torch.Tensor:
    """The text encoder's output for the empty prompt, padded to the tokenizer's length: [1, L, D]."""
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()


def build_from_sd15(base: str | Path, image_size: int = 512, prediction_type: str | None = None,
                    zero_terminal_snr: bool = False) -> RGBDFaceModel:
    """Build the stage-0 joint model from a Stable-Diffusion-1.5-layout diffusers folder on disk.

    Reads unet/, vae/, text_encoder/, tokenizer/ and scheduler/; nothing is downloaded.
    The text encoder is used once, for the cached empty-prompt embedding, and not kept.
    `prediction_type` overrides the base scheduler's (None keeps it: epsilon for SD 1.5);
    `zero_terminal_snr` see `_schedule`.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = Path(base)
    missing = [p for p in SD15_PARTS if not (base / p).is_dir()]
    if missing:
        raise InputError(f"--base {base}: not a Stable Diffusion 1.5 diffusers folder (missing {', '.join(missing)}/)")
    for part in ("unet", "vae", "text_encoder"):
        if not any((base / part).glob("*.safetensors")):
            raise InputError(f"--base {base}: {part}/ has no .safetensors weights; convert the base model to safetensors first")
    kw = dict(local_files_only=True)  # weights: safetensors only, never unpickled
    unet = UNet2DConditionModel.from_pretrained(base / "unet", use_safetensors=True, **kw)
    vae = AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True, **kw)
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer", **kw)
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", use_safetensors=True, **kw)
    scheduler_config = _schedule(dict(DDPMScheduler.from_pretrained(base / "scheduler", **kw).config), prediction_type, zero_terminal_snr)
    context = empty_prompt_embedding(tokenizer, text_encoder)
    return _joint_from_base(vae, unet, context, scheduler_config, image_size, base=str(base)).eval()
