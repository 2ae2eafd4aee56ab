"""`rgbdface train`: stage 1, the joint RGB + depth denoiser and its ReferenceNet (paper §3.2, §5.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, handle_errors
from rgbdface.cli.options import JsonOpt, ThreadsOpt, QuietOpt
from rgbdface.cli.training import (ConfigOpt, CpuOpt, DatasetArg, MaxStepsOpt, OverwriteRunOpt, ResumeOpt, RunDirOpt,
                                   SetOpt, ShowConfigOpt, TrackerOpt, run_training)


@handle_errors
def train_command(
    dataset: DatasetArg,
    output: RunDirOpt,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Start from this stage-0 model folder (from `rgbdface init-model`).")] = None,
    base: Annotated[Optional[Path], typer.Option("--base", help="Start from a fresh stage-0 model built from this SD-1.5 diffusers folder.")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Start from a fresh tiny stage-0 model (CPU-sized).")] = False,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Crop size with --base/--tiny (default 512 / 64).")] = None,
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
    """Train stage 1: the joint RGB + depth denoiser and its ReferenceNet (paper §3.2, §5.1).

    The loss is paper eq. (5) on [eps_rgb, eps_depth], with a reference drawn from another
    frame/view of the same identity, reference dropout for CFG, and a configurable
    studio/wild mix. Writes RUN_DIR/model (stages [0, 1]) and prints its path (with --json,
    the report instead)."""
    from rgbdface.training.loop import TrainRequest

    req = TrainRequest(stage=1, dataset=dataset, run_dir=output, model=model, base=base, tiny=tiny, image_size=image_size,
                       recipe=config, overrides=set_ or [], max_steps=max_steps, resume=resume, overwrite=overwrite,
                       tracker=tracker, cpu=cpu, quiet=quiet)
    run_training(req, show_config, quiet, as_json)


def register(app: typer.Typer) -> None:
    app.command("train", cls=ReportingCommand)(train_command)
