"""Options and the runner shared by `train`, `finetune-mask` and `train-motion`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import log

DatasetArg = Annotated[Path, typer.Argument(help="Dataset folder made by `rgbdface prep-depth` (dataset.json + manifest).", show_default=False)]
RunDirOpt = Annotated[Path, typer.Option("--output", "-o", help="Run folder: config.json, log.jsonl, samples/, checkpoints/, and the trained model/ at the end.")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="Recipe: 'tiny', 'sd15' or a JSON file (default: tiny below 256 px, else sd15).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one config value, e.g. --set optim.lr=1e-4 (repeatable; see `--show-config`).")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Optimizer steps in total (same as --set optim.max_steps=N).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue exactly from the newest checkpoint in the run folder (starts fresh if it has none).")]
OverwriteRunOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the trained model/ of a finished run in the same folder.")]
TrackerOpt = Annotated[Optional[str], typer.Option("--tracker", help="Also log to an Accelerate tracker: tensorboard, wandb, ... (must be installed).")]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="Train on the CPU even where CUDA is available.")]
ShowConfigOpt = Annotated[bool, typer.Option("--show-config", help="Print the resolved config as JSON on stdout and exit (nothing is trained).")]


def run_training(req, show_config: bool, quiet: bool) -> None:
    """Check (one-line errors before any work), then train; prints the model folder on stdout."""
    import json
    import os

    from rgbdface.training.loop import plan, run

    # Under a launcher (accelerate launch, torchrun) only the main process talks.
    quiet = quiet or int(os.environ.get("RANK", "0")) != 0
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="rgbdface: %(message)s")
    p = plan(req)
    if show_config:
        print(json.dumps(p.config.to_dict(), indent=2))
        return
    log(f"{req.dataset}: {len(p.samples)} samples; starting from {p.init}; run folder {req.run_dir}", quiet)
    out = run(p)
    if int(os.environ.get("RANK", "0")) == 0:
        log(f"trained model written to {out}", quiet)
        print(out)
