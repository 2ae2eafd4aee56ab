"""Options and the runner shared by `train`, `finetune-mask` and `train-motion`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import log, report
from rgbdface.utils import UsageError, launcher_rank

DatasetArg = Annotated[Path, typer.Argument(help="Dataset folder made by `rgbdface prep-depth` (dataset.json + manifest).", show_default=False)]
RunDirOpt = Annotated[Path, typer.Option("--output", "-o", help="Run folder: config.json, log.jsonl, samples/, checkpoints/, and the trained model/ at the end.")]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="Recipe: 'tiny', 'sd15' or a JSON file (default: tiny below 256 px, else sd15).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one config value, e.g. --set optim.lr=1e-4 (repeatable; see `--show-config`).")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Optimizer steps in total (same as --set optim.max_steps=N).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue exactly from the newest checkpoint in the run folder (starts fresh if it has none).")]
OverwriteRunOpt = Annotated[bool, typer.Option("--overwrite", help="Train again from the start in a run folder that has a run: its checkpoints, log and samples are removed when training starts, its model/ is replaced at the end. Not with --resume.")]
TrackerOpt = Annotated[Optional[str], typer.Option("--tracker", help="Also log to an Accelerate tracker: tensorboard, wandb, ... (must be installed).")]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="Train on the CPU even where CUDA is available.")]
ShowConfigOpt = Annotated[bool, typer.Option("--show-config", help="Print the resolved config as JSON on stdout and exit (nothing is trained).")]


def run_training(req, show_config: bool, quiet: bool, as_json: bool = False) -> None:
    """Check (one-line errors before any work), then train; prints the model folder on stdout
    (with --json, the report instead: run_dir, model, checkpoint, steps, final_loss, samples_seen, train_seconds)."""
    import json
    import os
    import time

    from rgbdface.models.folder import META_FILE
    from rgbdface.training.loop import plan, run

    if show_config and as_json:
        raise UsageError("--show-config prints the config as JSON; leave out --json")
    # Under a launcher (accelerate launch, torchrun) only the main process talks. RANK/WORLD_SIZE
    # without the rendezvous a launcher sets would train one process that thinks it is one of many.
    world = launcher_rank()
    if world is not None and world[1] > 1 and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise UsageError(f"RANK={world[0]} WORLD_SIZE={world[1]} are set, but no launcher started this process "
                         "(no MASTER_ADDR/MASTER_PORT); start it with `accelerate launch` or `torchrun`, or unset RANK and WORLD_SIZE")
    main = world is None or world[0] == 0
    quiet = quiet or not main
    report().printed = main
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="rgbdface: %(message)s")
    p = plan(req)
    if show_config:
        print(json.dumps(p.config.to_dict(), indent=2))
        return
    log(f"{req.dataset}: {len(p.samples)} samples; starting from {p.init}; run folder {req.run_dir}", quiet)
    t0 = time.perf_counter()
    out = run(p)
    if main:
        from rgbdface.training.state import latest_checkpoint

        done = json.loads((out / META_FILE).read_text())["extra"][f"stage{req.stage}"]
        checkpoint = latest_checkpoint(req.run_dir)
        report().wrote(req.run_dir)
        report().add(run_dir=str(req.run_dir), model=str(out), checkpoint=str(checkpoint) if checkpoint else None,
                     steps=done["steps"], final_loss=done["final_loss"], samples_seen=done["samples_seen"],
                     train_seconds=round(time.perf_counter() - t0, 3))
        log(f"trained model written to {out}", quiet)
        if not as_json:
            print(out)
