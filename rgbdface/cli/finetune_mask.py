"""`rgbdface finetune-mask`: stage 2, the masked (channel-wise inpainting) denoiser (paper §4.1, supp. §7.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rgbdface.cli.common import ReportingCommand, handle_errors
from rgbdface.cli.options import JsonOpt, ThreadsOpt, QuietOpt
from rgbdface.cli.training import (ConfigOpt, CpuOpt, DatasetArg, MaxStepsOpt, OverwriteRunOpt, ResumeOpt, RunDirOpt,
                                   SetOpt, ShowConfigOpt, TrackerOpt, run_training)


@handle_errors
def finetune_mask_command(
    dataset: DatasetArg,
    output: RunDirOpt,
    model: Annotated[Path, typer.Option("--model", "-m", help="A stage-1 model folder (or the run folder of `rgbdface train`).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
    tracker: TrackerOpt = None,
    cpu: CpuOpt = False,
    show_config: ShowConfigOpt = False,
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune stage 2: the masked variant for image -> depth and depth -> image (paper §4.1).

    The masked denoiser is widened from the stage-1 denoiser and trained with asymmetric
    masks drawn per sample (joint, image->depth, depth->image, spatial boxes; probabilities
    masks.p_*). Writes RUN_DIR/model (stages [0, 1, 2]) and prints its path (with --json,
    the report instead)."""
    from rgbdface.training.loop import TrainRequest

    req = TrainRequest(stage=2, dataset=dataset, run_dir=output, model=model, recipe=config, overrides=set_ or [],
                       max_steps=max_steps, resume=resume, overwrite=overwrite, tracker=tracker, cpu=cpu, quiet=quiet)
    run_training(req, show_config, quiet, as_json)


def register(app: typer.Typer) -> None:
    app.command("finetune-mask", cls=ReportingCommand)(finetune_mask_command)
