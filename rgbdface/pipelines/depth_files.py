"""Depth estimation over files: plan each input's outputs, estimate batch by batch, write each input's files together.

The library side of `rgbdface estimate-depth`, usable from Python:

    from rgbdface.pipelines.depth_files import DepthFileOptions, estimate_depth_files, plan_depth_jobs

    jobs = plan_depth_jobs(sources, Path("depth/"), DepthFileOptions(preview=True))  # checked, nothing written
    outcome = estimate_depth_files(jobs, load_model=lambda: load_model(None), margin=0.6)

Every output path of the run is planned up front (`rgbdface.data.outputs.OutputPlan`):
two inputs that would write the same file, or an output that is an input, stop the
run before any work. Each depth PNG records the options that made it (a PNG text chunk,
`rgbdface`), so that a later run can tell an output made with other options.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from rgbdface.data.outputs import OutputPlan
from rgbdface.utils import InputError, UsageError

if TYPE_CHECKING:
    from rgbdface.models.model import RGBDFaceModel
    from rgbdface.pipelines.depth import DepthResult

DEPTH_SUFFIXES = (".png", ".npy")
MESH_FORMATS = ("ply", "obj", "glb")
RECORD_KEY = "rgbdface"  # the PNG text chunk holding the options a depth map was made with
KIND_NAMES = {"depth": "the depth", "npy": "the .npy depth", "preview": "the preview", "uncertainty": "the uncertainty", "mesh": "the mesh"}


@dataclass
class DepthFileOptions:
    """Which files each input gets, beside its depth map (see `rgbdface estimate-depth --help`)."""

    npy: bool = False  # STEM.npy: float depth in the PNG's units
    preview: bool = False  # STEM_preview.png
    uncertainty: bool = False  # STEM_uncertainty.npy
    mesh: str | None = None  # a format (ply, obj, glb) for STEM.FORMAT, or a file for a single input
    relief: float = 0.5  # mesh relief


@dataclass
class DepthJob:
    """One input image and every file it produces (kind → path; "depth" first)."""

    source: Path
    outputs: dict[str, Path] = field(default_factory=dict)  # kind ("depth", "npy", "preview", "uncertainty", "mesh") → path
    named: bool = False  # the depth file was named by the caller (-o FILE), not derived from the input's name

    def done(self) -> bool:
        return all(p.is_file() for p in self.outputs.values())


def plan_depth_jobs(sources: list[Path], output: Path, options: DepthFileOptions | None = None, single: bool = False) -> list[DepthJob]:
    """The files each input produces, checked together before any work (UsageError, InputError).

    `output` is a depth file (.png or .npy) when `single` and there is one source, else a folder
    that gets STEM.png (and STEM.npy, STEM_preview.png, STEM_uncertainty.npy, STEM.FORMAT) per input.
    """
    options = options or DepthFileOptions()
    file_mode = output.suffix.lower() in DEPTH_SUFFIXES
    if file_mode and not (single and len(sources) == 1):
        raise UsageError(f"-o {output}: with several inputs (or a folder, glob or '-') -o must be a folder")
    if output.suffix and not file_mode and output.suffix.lower() in {".jpg", ".jpeg", ".tif", ".tiff", ".exr"}:
        raise UsageError(f"-o {output}: depth is written as .png (16-bit) or .npy")
    mesh_suffix, mesh_path = None, None
    if options.mesh is not None:
        fmt = options.mesh.lower().lstrip(".")
        if fmt in MESH_FORMATS:
            mesh_suffix = f".{fmt}"
        elif Path(options.mesh).suffix.lower().lstrip(".") in MESH_FORMATS:
            if len(sources) > 1 or not single:
                raise UsageError(f"--mesh {options.mesh}: with several inputs give a format (ply, obj or glb), not a file")
            mesh_path = Path(options.mesh)
        else:
            raise UsageError(f"--mesh {options.mesh}: expected a .ply, .obj or .glb file, or one of ply, obj, glb")

    jobs = []
    plan = OutputPlan()
    if not file_mode:
        plan.folder(output, "-o", replaced=False)
    for src in sources:
        base = output.with_suffix("") if file_mode else output / src.stem
        main = output if file_mode else base.with_suffix(".png")
        outputs = {"depth": main}
        if options.npy and main.suffix.lower() != ".npy":
            outputs["npy"] = base.with_suffix(".npy")
        if options.preview:
            outputs["preview"] = base.with_name(base.name + "_preview.png")
        if options.uncertainty:
            outputs["uncertainty"] = base.with_name(base.name + "_uncertainty.npy")
        if mesh_path or mesh_suffix:
            outputs["mesh"] = mesh_path or base.with_suffix(mesh_suffix)
        plan.input(src)
        for kind, path in outputs.items():
            plan.file(path, "-o" if file_mode and kind == "depth" else f"{KIND_NAMES[kind]} of {src}")
        jobs.append(DepthJob(src, outputs, named=file_mode))
    plan.check()
    return jobs


# ----------------------------------------------------------------------------- the options record
def depth_record(model: Path | None, steps: int | None = None, flip: bool | None = None, **options) -> dict:
    """What a depth map records of the run that made it: the options that change its values (the model
    folder, steps and flip as the model resolves them, and `options`: seed, scheduler, ensemble, guidance).
    Reads the model's rgbdface.json only, not its weights."""
    from rgbdface.models.folder import DEFAULT_DEPTH_STEPS, model_folder, read_meta

    meta = read_meta(model)
    steps = steps if steps is not None else meta.get("depth_steps") or DEFAULT_DEPTH_STEPS
    flip = bool(meta.get("depth_flip")) if flip is None else bool(flip)
    return dict(model=str(model_folder(model).resolve()), steps=steps, flip=flip, **options)


def read_record(path: Path) -> dict | None:
    """The options recorded in a depth PNG (None: not a PNG, or made without a record)."""
    import json

    from rgbdface.data.png import read_png_text

    try:
        text = read_png_text(path).get(RECORD_KEY)
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def record_differences(recorded: dict | None, wanted: dict) -> list[str]:
    """'--ensemble 1 (now 3)' for each option whose recorded value differs; ['unknown'] without a record."""
    if recorded is None:
        return ["unknown"]
    out = []
    for key, value in wanted.items():
        if recorded.get(key) != value:
            out.append(f"--{key.replace('_', '-')} {_show(recorded.get(key))} (now {_show(value)})")
    return out


def _show(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class JobSelection:
    """Which jobs a run does: `todo`; `skipped` (outputs exist, made alike or without a record);
    `stale`: source → the options that differ ('--seed 0 (now 3)') for skipped outputs made otherwise;
    `redone`: depth file → the options that differ, for named outputs that are redone."""

    todo: list[DepthJob] = field(default_factory=list)
    skipped: list[DepthJob] = field(default_factory=list)
    stale: dict[Path, list[str]] = field(default_factory=dict)
    redone: dict[Path, list[str]] = field(default_factory=dict)


def select_jobs(jobs: list[DepthJob], record: dict, overwrite: bool = False) -> JobSelection:
    """Jobs whose outputs are missing are done; with all outputs present a job is skipped (so an
    interrupted run resumes), unless `overwrite`, or its depth file was named by the caller and
    records other options than `record` (or none): then it is redone."""
    out = JobSelection()
    for job in jobs:
        if overwrite or not job.done():
            out.todo.append(job)
            continue
        differs = record_differences(read_record(job.outputs["depth"]), record)
        if job.named and differs:
            out.todo.append(job)
            if differs != ["unknown"]:
                out.redone[job.outputs["depth"]] = differs
            continue
        out.skipped.append(job)
        if differs and differs != ["unknown"]:
            out.stale[job.source] = differs
    return out


# ----------------------------------------------------------------------------- estimating
class DepthBatchRunner:
    """Reads and crops a batch of jobs' images, loads the model when the first image needs it, estimates.

    load_model: returns the stage-2 model (called once, lazily); margin: the model's crop margin, so
    that images are cropped (and bad ones found) before it is loaded; options: `estimate_depths` keywords.
    """

    def __init__(self, load_model: Callable[[], "RGBDFaceModel"], margin: float, options: dict):
        self.load_model, self.margin, self.options = load_model, margin, options
        self.model: "RGBDFaceModel | None" = None
        self.seconds = 0.0  # reading, cropping and estimating (not writing)

    def load(self) -> "RGBDFaceModel":
        if self.model is None:
            self.model = self.load_model()
            self.model.require_stage(2, "estimate-depth")
        return self.model

    def run(self, batch: list[DepthJob]) -> list[tuple["DepthResult", np.ndarray] | str]:
        """(result, image) per job, or the one-line reason it failed."""
        from rgbdface.data.io import load_image
        from rgbdface.pipelines.depth import estimate_depths, prepare_depth_input

        prepared, images, outcome = {}, {}, {}
        for job in batch:
            try:
                image = load_image(job.source)
                prepared[job.source] = prepare_depth_input(image, name=str(job.source), margin=self.margin)
                images[job.source] = image
            except InputError as e:
                outcome[job.source] = str(e)
        if prepared:
            results = estimate_depths(self.load(), list(prepared.values()), **self.options)
            outcome.update((src, (r, images[src])) for src, r in zip(prepared, results))
        return [outcome[job.source] for job in batch]


def depth_writers(job: DepthJob, result: "DepthResult", image: np.ndarray, relief: float = 0.5,
                  record: dict | None = None) -> dict[Path, Callable[[Path], object]]:
    """How to write each output of a job to a temporary path (`write_together` renames them together)."""
    import json

    from rgbdface.data.io import colorize_depth, save_depth16, save_image, save_npy
    from rgbdface.data.surface import depth_to_mesh, save_mesh
    from rgbdface.pipelines.depth import U16_PER_UNIT

    text = {RECORD_KEY: json.dumps(record, sort_keys=True)} if record is not None else None

    def depth_file(tmp):
        if job.outputs["depth"].suffix.lower() == ".npy":
            return save_npy(tmp, result.to_units())
        return save_depth16(tmp, result.to_u16(), text=text)

    makers = {
        "depth": depth_file,
        "npy": lambda tmp: save_npy(tmp, result.to_units()),
        "preview": lambda tmp: save_image(tmp, colorize_depth(result.depth, result.valid)),
        "uncertainty": lambda tmp: save_npy(tmp, np.where(result.valid, result.uncertainty * U16_PER_UNIT, 0.0).astype(np.float32)),
        "mesh": lambda tmp: save_mesh(tmp, depth_to_mesh(result.depth, result.valid, image, relief=relief)),
    }
    return {path: makers[kind] for kind, path in job.outputs.items()}


@dataclass
class JobOutcome:
    job: DepthJob
    error: str | None = None  # the one-line reason it failed, else None (its files were written)


def estimate_depth_files(jobs: list[DepthJob], runner: DepthBatchRunner, batch_size: int = 1, relief: float = 0.5,
                         record: dict | None = None) -> Iterator[list[JobOutcome]]:
    """Estimate and write `jobs` batch by batch; yields each batch's outcomes once its files are written.

    A bad input (unreadable, no face, a write that fails) is an outcome with its error; the rest go on.
    Each job's files appear together or not at all. `runner.seconds` adds up the estimation time.
    """
    from rgbdface.utils import write_together

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        t0 = time.perf_counter()
        results = runner.run(batch)
        runner.seconds += time.perf_counter() - t0
        outcomes = []
        for job, result in zip(batch, results):
            if isinstance(result, str):
                outcomes.append(JobOutcome(job, result))
                continue
            try:
                write_together(depth_writers(job, result[0], result[1], relief, record))
                outcomes.append(JobOutcome(job))
            except (InputError, OSError, ValueError) as e:
                outcomes.append(JobOutcome(job, f"{job.source}: {e}"))
        yield outcomes
