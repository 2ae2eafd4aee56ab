"""Options shared by every command, defined once and reused in each signature."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelOpt = Annotated[
    Optional[Path],
    typer.Option("--model", "-m", help="Model folder (from `train`, `finetune-mask` or `train-motion`). Default: the bundled rgbdface-tiny."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Weights: 'auto' (fp16 on CUDA, float32 on CPU), 'fp32', 'fp16' or 'bf16'.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same output.")]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Number of denoising steps.")]
DepthStepsOpt = Annotated[Optional[int], typer.Option("--steps", min=1, show_default=False,
                                                      help="Denoising steps of the depth estimate [default: the model's own (its depth_steps; the bundled model: 1), else 25].")]
DepthFlipOpt = Annotated[Optional[bool], typer.Option("--flip/--no-flip", show_default=False,
                                                      help="Also estimate the mirrored image and ensemble the two (test-time mirroring; twice the compute) [default: the model's own choice (its depth_flip), else off].")]
SchedulerOpt = Annotated[str, typer.Option("--scheduler", help="Sampling scheduler: ddim, ddpm, dpm (DPM-Solver++), euler, unipc, or any diffusers scheduler class name.")]
GuidanceOpt = Annotated[float, typer.Option("--guidance", min=1.0, help="Classifier-free guidance scale on the reference (1 = off).")]
TalkGuidanceOpt = Annotated[Optional[float], typer.Option("--guidance", min=1.0, show_default=False,
                                                         help="Classifier-free guidance scale on the reference (1 = off; above 1, twice the compute) [default: the model's own choice (its talk_guidance; the bundled model: 2), else 1].")]
OutputDirOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log output on stderr.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo outputs that already exist (default: skip them).")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="Process only shard i of n ('i/n', 0-based); default from RANK/WORLD_SIZE when launched.")]
OutputFileOpt = Annotated[Path, typer.Option("--output", "-o", help="Output file; written atomically, the format follows the suffix.")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", show_default=False, help="How results go to stdout: 'table' (default), 'json' or 'csv'.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a one-line JSON report on stdout when done (command, exit_code, error, seconds, written, failed, skipped, and the command's own keys); nothing else goes to stdout.")]
# Read by ReportingCommand.invoke (parameter name `cpu_threads`), which sets the threads before the command runs.
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, show_default=False,
                                                  help="CPU threads for the math [default: OMP_NUM_THREADS or else SLURM_CPUS_PER_TASK when set, else the CPUs this process may use that the load average leaves idle, at least 1].")]
