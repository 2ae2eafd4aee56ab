"""`rgbdface estimate-depth`: portraits → relative face depth at each input's size (paper §5.2)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import (ReportingCommand, error_line, expand_inputs, fail, handle_errors, log, parse_shard, progress_bar, report,
                                 take_shard)
from rgbdface.cli.loading import load_for_command
from rgbdface.cli.options import (
    DeviceOpt, DtypeOpt, GuidanceOpt, JsonOpt, ThreadsOpt, ModelOpt, OverwriteOpt, QuietOpt, SchedulerOpt, SeedOpt, ShardOpt, DepthStepsOpt, DepthFlipOpt,
)
from rgbdface.utils import InputError, check_input_file

# Shared with `relight`, which estimates depth when it is not given one.
EnsembleOpt = Annotated[int, typer.Option("--ensemble", "-e", min=1, help="Ensemble size: N samples per image (seeds drawn from --seed), aligned by least-squares scale/shift and combined by their median.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per model batch; results differ across batch sizes only by floating-point rounding (on the CPU within 1 unit of 65535). Default: 8 on CUDA, 1 on the CPU.")]


@handle_errors
def estimate_depth_command(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Images, folders (searched recursively), globs, or '-' to read paths from stdin, one per line.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="A depth file (.png 16-bit or .npy) for a single input, else a folder that gets STEM.png per input.", show_default=False)],
    ensemble: EnsembleOpt = 1,
    npy: Annotated[bool, typer.Option("--npy", help="Also write STEM.npy: float32 depth in the PNG's units (1..65535), unrounded; 0 = no depth.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Also write STEM_preview.png: the depth colourised (near = bright, black = no depth).")] = False,
    uncertainty: Annotated[bool, typer.Option("--uncertainty", help="Also write the ensemble's spread (scaled MAD) in the PNG's units, as STEM + _uncertainty.npy. Needs --ensemble N > 1 or --flip.")] = False,
    mesh: Annotated[Optional[str], typer.Option("--mesh", metavar="PATH|FORMAT", help="Also write a coloured triangle mesh of the depth: a file (.ply, .obj, .glb; single input) or a format (ply, obj, glb) for STEM.FORMAT beside each depth. Orthographic camera in pixels: x right, y up, z toward the viewer (see the man page of estimate-depth).")] = None,
    relief: Annotated[float, typer.Option("--relief", help="Mesh relief: the face's depth range spans this fraction of its width (as for relight).")] = 0.5,
    steps: DepthStepsOpt = None,
    flip: DepthFlipOpt = None,
    seed: SeedOpt = 0,
    scheduler: SchedulerOpt = "ddim",
    guidance: GuidanceOpt = 1.0,
    batch_size: BatchSizeOpt = None,
    shard: ShardOpt = None,
    overwrite: OverwriteOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Estimate the relative depth of the face in each INPUT, at the input's size.

    The image is cropped to its largest face (the shared 512 px crop) and the face mesh is fitted on it; the stage-2 model generates the depth latent with the image latent known (m_rgb = 0, m_depth = 1) and the image as its own reference; the depth is pasted back into the full frame. Output size: each input's own (the face is estimated at the model's size, rgbdface.json's image_size, 64 x 64 px for the bundled model, and resized onto the face region). Output: a 16-bit PNG with 1 + (d + 1) * 32767 for relative depth d in [-1, 1] (larger = farther) and 0 outside the face region, i.e. where the fitted face mesh lies (skin and eyes; not the mouth opening, hair, neck or background). Depth is affine-invariant: compare maps after a scale and shift fit (rgbdface eval does).

    Inputs: files, folders (searched recursively), globs, and '-' for paths on stdin, one per line (ls *.jpg | rgbdface estimate-depth - -o depth/). With one input file, -o may name the depth file (.png or .npy); otherwise -o is a folder that gets STEM.png per input, with --npy, --preview, --uncertainty and --mesh outputs beside it (STEM.npy, STEM_preview.png, STEM_uncertainty.npy, STEM.ply|obj|glb). Every output of an input is written atomically, all or none.

    --ensemble N: N samples per image from the image's own seeded generator. The member closest to the pixelwise median (after standardising each) sets the frame, every member is fitted onto it by least-squares scale and shift over the face region, and the result is the pixelwise median of the aligned members; the uncertainty is their scaled median absolute deviation (1.4826 MAD) in the PNG's units. --flip adds the mirrored image's N estimates, mirrored back, to the ensemble (2N members).

    --mesh: the relight camera, orthographic in pixels, x right, y up, z toward the viewer: pixel (row v, column u) becomes the vertex (u + 0.5, -(v + 0.5), -s (d - d_min)), s chosen so that the face's depth range spans --relief times its width; two triangles per 2 x 2 block of face pixels, counter-clockwise seen from the viewer, coloured by the image.

    Outputs: every output path of the run is planned before any work. Two inputs that would write the same file (a.jpg and a.png; a_preview.jpg's depth and a.jpg's preview), an output that is an input, or an output location that cannot be written (-o naming a folder for a file, or a file for a folder) stop the run before a model is loaded (exit 2 for collisions, 1 for locations). A folder search never descends into the -o folder. Each depth PNG records the options that made it (a PNG text chunk, 'rgbdface').

    Batches and clusters: outputs that exist are skipped (--overwrite redoes them), so an interrupted run resumes; skipped outputs made with other options are counted and the option named. A depth file named by -o is redone when it was made with other options (a .npy records none: it is always redone). --shard i/n (or RANK/WORLD_SIZE) takes every n-th input from the i-th; --batch-size images go through the model together with the same noise as alone, so an image's depth depends on its batch only through floating-point rounding of batched kernels: on the CPU (float32) maps from different batch sizes agree within 1 unit of 65535, with the same face region; in CUDA's 16-bit weights the rounding is coarser. A progress bar with ETA goes to stderr. A bad input (unreadable, no face, a face too small) is reported by name and the rest are done; the exit status is then 1. A model without stage 2 is an error before anything is written. On CUDA the model runs with 16-bit weights (--dtype), only its depth-estimation parts loaded, and --batch-size defaults to what the free memory takes.

    --json: `written` lists every file written, `skipped` the inputs whose outputs existed, `failed` the bad inputs; it adds images (inputs estimated in this run), shard, and estimate_seconds (model loading and estimation, without writing).
    """
    from rgbdface.data.io import IMAGE_SUFFIXES
    from rgbdface.models.folder import model_crop_margin
    from rgbdface.pipelines.depth_files import (DepthBatchRunner, DepthFileOptions, depth_record, estimate_depth_files, plan_depth_jobs,
                                                select_jobs)

    # 1. Inputs, every output path, and options, before any work
    if not relief > 0:
        raise fail(f"--relief {relief}: expected a number > 0", 2)
    if uncertainty and ensemble < 2 and not flip:
        raise fail("--uncertainty needs several estimates: --ensemble N with N > 1, or --flip", 2)
    sources = expand_inputs(inputs, IMAGE_SUFFIXES, stdin=sys.stdin, exclude=output)  # not the outputs of an earlier run
    if not sources:
        raise fail(f"no input images in {' '.join(inputs)}", 1)
    files = DepthFileOptions(npy=npy, preview=preview, uncertainty=uncertainty, mesh=mesh, relief=relief)
    jobs = plan_depth_jobs(sources, output, files, single=_names_one_file(inputs))
    index, count = parse_shard(shard)
    mine = take_shard(jobs, index, count)
    record = depth_record(model, steps=steps, flip=flip, seed=seed, scheduler=scheduler, ensemble=ensemble, guidance=guidance,
                          **({"relief": relief} if mesh else {}))  # the mesh's relief, when there is a mesh
    chosen = select_jobs(mine, record, overwrite)
    todo, stale = chosen.todo, chosen.stale
    for path, differs in chosen.redone.items():
        log(f"{path} was made with other options ({', '.join(differs)}); redoing it", quiet)
    report().skip(*(j.source for j in chosen.skipped))
    report().add(images=0, shard=f"{index}/{count}", estimate_seconds=0.0)
    if len(todo) < len(mine):
        log(f"skipping {len(mine) - len(todo)} input(s) whose outputs exist (--overwrite to redo)", quiet)
    if stale:
        first = next(iter(stale.values()))
        log(f"warning: {len(stale)} of the skipped outputs were made with other options ({', '.join(first)} for "
            f"{next(iter(stale))}); --overwrite redoes them", quiet)
    if count > 1:
        log(f"shard {index}/{count}: {len(mine)} of {len(jobs)} inputs", quiet)
    # A missing input is reported now, before the model and its libraries load (seconds)
    failed: list[tuple[Path, str]] = []
    for job in todo:
        try:
            check_input_file(job.source, "image file")
        except InputError as e:
            failed.append((job.source, str(e)))
            if len(jobs) > 1:
                error_line(str(e))
    present = [j for j in todo if j.source not in {f for f, _ in failed}]
    if not todo:
        return

    # 2. Estimate batch by batch; a bad input is reported and skipped, each input's files appear together
    options = dict(steps=steps, seed=seed, scheduler=scheduler, ensemble=ensemble, guidance=guidance, flip=flip)
    runner = DepthBatchRunner(lambda: load_for_command(model, device, dtype, quiet, stage=2), model_crop_margin(model), options)
    with progress_bar(len(present), quiet or not present) as bar:
        size = batch_size or (default_batch_size(device, model, dtype) if present else 1)
        for outcomes in estimate_depth_files(present, runner, size, relief, record):
            for o in outcomes:
                if o.error is None:
                    report().wrote(*o.job.outputs.values())
                    continue
                failed.append((o.job.source, o.error))
                if len(jobs) > 1:
                    bar.write(f"rgbdface: error: {o.error}", file=sys.stderr)
            bar.update(len(outcomes))

    # 3. Report: bad inputs are failures of the batch (exit 1), not of the command
    for source, error in failed:
        report().fail_input(source, error)
    report().add(images=len(todo) - len(failed), estimate_seconds=round(runner.seconds, 3))
    if failed:
        if len(jobs) == 1:
            error_line(failed[0][1])
        else:
            error_line(f"{len(failed)} of {len(todo)} inputs failed (each reported above): {', '.join(str(p) for p, _ in failed)}")
        raise typer.Exit(1)
    where = todo[0].outputs["depth"] if len(todo) == 1 else output
    log(f"estimated depth for {len(todo)} image(s), each at its own size (the face estimated at the model's "
        f"{runner.model.meta.image_size if runner.model else '?'} px) → {where}", quiet)


def _names_one_file(inputs: list[str]) -> bool:
    """One argument naming a file (not a folder, a glob or '-'): then `-o` may be a file."""
    if len(inputs) != 1 or inputs[0] == "-":
        return False
    p = Path(inputs[0])
    return p.is_file() or not (p.is_dir() or any(ch in inputs[0] for ch in "*?["))


def default_batch_size(device: str, model: Path | None = None, dtype: str = "auto") -> int:
    """1 on the CPU; on CUDA as many images as the free memory takes once the model is loaded
    (rgbdface.pipelines.memory's table by resolution and dtype)."""
    from rgbdface.cli.common import resolve_device

    dev = resolve_device(device)
    if not dev.startswith("cuda"):
        return 1
    import torch

    from rgbdface.models.folder import read_meta
    from rgbdface.pipelines.memory import batch_size_for

    half = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    return batch_size_for("unet", dev, int(read_meta(model).get("image_size", 512)), half.get(dtype, torch.float16),
                          cap=32, weights=True)


def register(app: typer.Typer) -> None:
    app.command("estimate-depth", cls=ReportingCommand, no_args_is_help=True)(estimate_depth_command)
