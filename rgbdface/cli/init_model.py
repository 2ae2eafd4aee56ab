"""`rgbdface init-model`: build an untrained (stage-0) joint model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, handle_errors, log, report
from rgbdface.cli.options import JsonOpt, ThreadsOpt, QuietOpt, SeedOpt
from rgbdface.utils import InputError, UsageError


@handle_errors
def init_model_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write.")],
    base: Annotated[Optional[Path], typer.Option("--base", help="A diffusers folder laid out as Stable Diffusion 1.5 (unet/ vae/ text_encoder/ tokenizer/ scheduler/).")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Use the tiny configuration (random weights, runs on a CPU in seconds).")] = False,
    vae: Annotated[Optional[Path], typer.Option("--vae", help="With --tiny: a trained AutoencoderKL folder (from `rgbdface train-vae`) instead of a random one.")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Face-crop size in pixels (default 512 for --base, 64 for --tiny).")] = None,
    prediction_type: Annotated[Optional[str], typer.Option("--prediction-type", help="What the denoiser outputs, for every stage: 'epsilon' (the paper's eq. 5; default for --tiny) or 'v_prediction' (supervises the clean latent at high noise too; the bundled tiny model uses it). Default: the base scheduler's.")] = None,
    zero_terminal_snr: Annotated[bool, typer.Option("--zero-terminal-snr", help="Rescale the noise schedule so that its last step is pure noise (needs --prediction-type v_prediction): with SD's schedule the mean colour of the image still shows through the noise there, so the seed rather than the reference picks a sample's colours.")] = False,
    seed: SeedOpt = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing folder.")] = False,
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build a stage-0 joint RGB + depth model from a base model (paper §3.3).

    The base UNet widened to 2C channels (new input channels zero-initialised, output layer
    duplicated), a ReferenceNet copied from the base UNet, the base VAE, and the cached
    empty-prompt embedding.

    --json adds: image_size, stages."""
    from rgbdface.models.folder import PREDICTION_TYPES

    if (base is None) == (not tiny):
        raise UsageError("give exactly one of --base SD15_DIR or --tiny")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise InputError(f"{output}: already exists; pass --overwrite to replace it")
    if vae is not None and not tiny:
        raise UsageError("--vae goes with --tiny (an SD-1.5 base brings its own VAE)")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"--prediction-type {prediction_type}: use one of {', '.join(PREDICTION_TYPES)}")
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise UsageError("--zero-terminal-snr needs --prediction-type v_prediction (at pure noise the noise tells nothing of the image)")
    for flag, folder in (("--base", base), ("--vae", vae)):
        if folder is not None and not folder.is_dir():
            raise InputError(f"{flag} {folder}: no such folder")
    from rgbdface.models.builder import build_from_sd15, build_tiny

    model = (build_tiny(image_size or 64, seed=seed, vae_dir=vae, prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr)
             if tiny else build_from_sd15(base, image_size or 512, prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr))
    model.save_pretrained(output)
    report().wrote(output)
    report().add(image_size=model.meta.image_size, stages=model.meta.stages)
    log(f"wrote stage-0 model ({'tiny' if tiny else base}, {model.meta.image_size}px) to {output}", quiet)
    if not model.meta.codec_trained:
        log("warning: its latent codec is untrained (random VAE weights) and a model trained from it decodes noise; "
            "for real use train one with `rgbdface train-vae` and pass it with --vae", quiet)


def register(app: typer.Typer) -> None:
    app.command("init-model", cls=ReportingCommand)(init_model_command)
