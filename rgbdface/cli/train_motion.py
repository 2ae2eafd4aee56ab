"""`rgbdface train-motion`: stage 3, audio and temporal modules on a frozen stage-1 model (paper §4.2, supp. §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rgbdface.cli.common import ReportingCommand, handle_errors
from rgbdface.cli.options import JsonOpt, ThreadsOpt, QuietOpt
from rgbdface.cli.training import (ConfigOpt, CpuOpt, DatasetArg, MaxStepsOpt, OverwriteRunOpt, ResumeOpt, RunDirOpt,
                                   SetOpt, ShowConfigOpt, TrackerOpt, run_training)


@handle_errors
def train_motion_command(
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
    """Train stage 3: audio and temporal attention for talking heads, on video clips with audio (paper §4.2).

    F frames with n ground-truth motion frames before them through the ReferenceNet, audio
    windows of k frames; only the audio projection, audio attention and temporal modules
    learn, every stage-1 weight stays frozen. Writes RUN_DIR/model (stage 3 added) and
    prints its path (with --json, the report instead)."""
    from rgbdface.training.loop import TrainRequest

    req = TrainRequest(stage=3, dataset=dataset, run_dir=output, model=model, recipe=config, overrides=set_ or [],
                       max_steps=max_steps, resume=resume, overwrite=overwrite, tracker=tracker, cpu=cpu, quiet=quiet)
    run_training(req, show_config, quiet, as_json)


def register(app: typer.Typer) -> None:
    app.command("train-motion", cls=ReportingCommand)(train_motion_command)
