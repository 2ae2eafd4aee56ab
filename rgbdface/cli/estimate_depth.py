"""`rgbdface estimate-depth`: portraits → relative face depth at each input's size (paper §5.2)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer

from rgbdface.cli.common import (ReportingCommand, error_line, expand_inputs, fail, handle_errors, log, parse_shard, progress_bar, report,
                                 take_shard, write_all)
from rgbdface.cli.options import (
    DeviceOpt, DtypeOpt, GuidanceOpt, JsonOpt, ThreadsOpt, ModelOpt, OverwriteOpt, QuietOpt, SchedulerOpt, SeedOpt, ShardOpt, DepthStepsOpt, DepthFlipOpt,
)
from rgbdface.utils import InputError, check_input_file

if TYPE_CHECKING:
    from rgbdface.pipelines.depth import DepthResult

DEPTH_SUFFIXES = (".png", ".npy")
MESH_FORMATS = ("ply", "obj", "glb")

# Shared with `relight`, which estimates depth when it is not given one.
EnsembleOpt = Annotated[int, typer.Option("--ensemble", "-e", min=1, help="Ensemble size: N samples per image (seeds drawn from --seed), aligned by least-squares scale/shift and combined by their median.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per model batch. Default: 8 on CUDA, 1 on the CPU.")]


@dataclass
class Job:
    """One input image and every file it produces (the first is the depth map)."""

    source: Path
    outputs: dict[str, Path] = field(default_factory=dict)  # kind ("depth", "npy", "preview", "uncertainty", "mesh") → path

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs.values())


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

    Batches and clusters: outputs that exist are skipped (--overwrite redoes them), so an interrupted run resumes; --shard i/n (or RANK/WORLD_SIZE) takes every n-th input from the i-th; --batch-size images go through the model together, and an image's depth does not depend on its batch. A progress bar with ETA goes to stderr. A bad input (unreadable, no face, a face too small) is reported by name and the rest are done; the exit status is then 1. A model without stage 2 is an error before anything is written. On CUDA the model runs under fp16 autocast.

    --json: `written` lists every file written, `skipped` the inputs whose outputs existed, `failed` the bad inputs; it adds images (inputs estimated in this run), shard, and estimate_seconds (model loading and estimation, without writing).
    """
    from rgbdface.data.io import IMAGE_SUFFIXES

    # 1. Inputs, outputs and options, before any work
    if not relief > 0:
        raise fail(f"--relief {relief}: expected a number > 0", 2)
    if uncertainty and ensemble < 2 and not flip:
        raise fail("--uncertainty needs several estimates: --ensemble N with N > 1, or --flip", 2)
    sources = expand_inputs(inputs, IMAGE_SUFFIXES, stdin=sys.stdin)
    if not sources:
        raise fail(f"no input images in {' '.join(inputs)}", 1)
    jobs = plan_jobs(sources, output, npy=npy, preview=preview, uncertainty=uncertainty, mesh=mesh,
                     single=_names_one_file(inputs))
    index, count = parse_shard(shard)
    mine = take_shard(jobs, index, count)
    todo = [j for j in mine if overwrite or not j.done()]
    report().skip(*(j.source for j in mine if j not in todo))
    report().add(images=0, shard=f"{index}/{count}", estimate_seconds=0.0)
    if len(todo) < len(mine):
        log(f"skipping {len(mine) - len(todo)} input(s) whose outputs exist (--overwrite to redo)", quiet)
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

    # 2. Estimate batch by batch; a bad input is reported and skipped
    runner = _Runner(model, device, dtype, quiet, dict(steps=steps, seed=seed, scheduler=scheduler, ensemble=ensemble, guidance=guidance, flip=flip))
    estimate_seconds = 0.0
    with progress_bar(len(present), quiet or not present) as bar:
        size = batch_size or (runner.default_batch_size() if present else 1)
        for start in range(0, len(present), size):
            batch = present[start : start + size]
            t0 = time.perf_counter()
            outcomes = runner.run(batch)
            estimate_seconds += time.perf_counter() - t0
            from rgbdface.utils import describe_os_error

            for job, outcome in zip(batch, outcomes):
                if isinstance(outcome, str):
                    failed.append((job.source, outcome))
                    if len(jobs) > 1:
                        bar.write(f"rgbdface: error: {outcome}", file=sys.stderr)
                    continue
                try:
                    write_all(_writers(job, outcome, runner.images[job.source], relief))
                    report().wrote(*job.outputs.values())
                except (InputError, OSError, ValueError) as e:
                    failed.append((job.source, f"{job.source}: {describe_os_error(e) if isinstance(e, OSError) else e}"))
                    if len(jobs) > 1:  # one input: its error is the command's one line, below
                        bar.write(f"rgbdface: error: {failed[-1][1]}", file=sys.stderr)
            bar.update(len(batch))
            runner.images.clear()

    # 3. Report: bad inputs are failures of the batch (exit 1), not of the command
    for source, error in failed:
        report().fail_input(source, error)
    report().add(images=len(todo) - len(failed), estimate_seconds=round(estimate_seconds, 3))
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


def plan_jobs(sources: list[Path], output: Path, npy: bool = False, preview: bool = False, uncertainty: bool = False,
              mesh: str | None = None, single: bool = False) -> list[Job]:
    """The files each input produces. `-o FILE.png|.npy` for one input; otherwise a folder of STEM.png."""
    file_mode = output.suffix.lower() in DEPTH_SUFFIXES
    if file_mode and not (single and len(sources) == 1):
        raise fail(f"-o {output}: with several inputs (or a folder, glob or '-') -o must be a folder", 2)
    if output.suffix and not file_mode and output.suffix.lower() in {".jpg", ".jpeg", ".tif", ".tiff", ".exr"}:
        raise fail(f"-o {output}: depth is written as .png (16-bit) or .npy", 2)
    mesh_suffix, mesh_path = None, None
    if mesh is not None:
        fmt = mesh.lower().lstrip(".")
        if fmt in MESH_FORMATS:
            mesh_suffix = f".{fmt}"
        elif Path(mesh).suffix.lower().lstrip(".") in MESH_FORMATS:
            if len(sources) > 1 or not single:
                raise fail(f"--mesh {mesh}: with several inputs give a format (ply, obj or glb), not a file", 2)
            mesh_path = Path(mesh)
        else:
            raise fail(f"--mesh {mesh}: expected a .ply, .obj or .glb file, or one of ply, obj, glb", 2)

    jobs, seen = [], {}
    for src in sources:
        base = output.with_suffix("") if file_mode else output / src.stem
        main = output if file_mode else base.with_suffix(".png")
        outputs = {"depth": main}
        if npy and main.suffix.lower() != ".npy":
            outputs["npy"] = base.with_suffix(".npy")
        if preview:
            outputs["preview"] = base.with_name(base.name + "_preview.png")
        if uncertainty:
            outputs["uncertainty"] = base.with_name(base.name + "_uncertainty.npy")
        if mesh_path or mesh_suffix:
            outputs["mesh"] = mesh_path or base.with_suffix(mesh_suffix)
        if main in seen:
            raise fail(f"{seen[main]} and {src} would both write {main}; rename one or run them into different folders", 2)
        seen[main] = src
        jobs.append(Job(src, outputs))
    return jobs


class _Runner:
    """Loads the model when the first image needs it, then estimates a batch of jobs."""

    def __init__(self, model, device, dtype, quiet, options: dict):
        from rgbdface.models.folder import model_crop_margin

        self.model_path, self.device, self.dtype, self.quiet, self.options = model, device, dtype, quiet, options
        self.model = None
        self.margin = model_crop_margin(model)  # images are cropped the model's way before it is loaded
        self.images: dict[Path, object] = {}

    def default_batch_size(self) -> int:
        from rgbdface.cli.common import resolve_device

        return 8 if resolve_device(self.device).startswith("cuda") else 1

    def load(self):
        if self.model is None:
            from rgbdface.cli.loading import load_for_command

            self.model = load_for_command(self.model_path, self.device, self.dtype, self.quiet)
            self.model.require_stage(2, "estimate-depth")
        return self.model

    def run(self, batch: list[Job]) -> list["DepthResult | str"]:
        """A DepthResult per job, or the one-line reason it failed."""
        from rgbdface.data.io import load_image
        from rgbdface.pipelines.depth import estimate_depths, prepare_depth_input

        prepared, outcome = {}, {}
        for job in batch:
            try:
                image = load_image(job.source)
                prepared[job.source] = prepare_depth_input(image, name=str(job.source), margin=self.margin)
                self.images[job.source] = image
            except InputError as e:
                outcome[job.source] = str(e)
        if prepared:
            results = estimate_depths(self.load(), list(prepared.values()), **self.options)
            outcome.update(zip(prepared, results))
        return [outcome[job.source] for job in batch]


def _writers(job: Job, result: "DepthResult", image, relief: float) -> dict[Path, Callable[[Path], object]]:
    """How to write each output of a job (to a temporary path; `write_all` renames them together)."""
    import numpy as np

    from rgbdface.data.io import colorize_depth, save_depth16, save_image, save_npy
    from rgbdface.data.surface import depth_to_mesh, save_mesh
    from rgbdface.pipelines.depth import U16_PER_UNIT

    def depth_file(tmp):
        return save_npy(tmp, result.to_units()) if job.outputs["depth"].suffix.lower() == ".npy" else save_depth16(tmp, result.to_u16())

    makers = {
        "depth": depth_file,
        "npy": lambda tmp: save_npy(tmp, result.to_units()),
        "preview": lambda tmp: save_image(tmp, colorize_depth(result.depth, result.valid)),
        "uncertainty": lambda tmp: save_npy(tmp, np.where(result.valid, result.uncertainty * U16_PER_UNIT, 0.0).astype(np.float32)),
        "mesh": lambda tmp: save_mesh(tmp, depth_to_mesh(result.depth, result.valid, image, relief=relief)),
    }
    return {path: makers[kind] for kind, path in job.outputs.items()}


def register(app: typer.Typer) -> None:
    app.command("estimate-depth", cls=ReportingCommand, no_args_is_help=True)(estimate_depth_command)
