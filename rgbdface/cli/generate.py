"""`rgbdface generate`: reference portrait → joint RGB + depth samples."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from rgbdface.cli.common import ReportingCommand, handle_errors, log, report
from rgbdface.cli.loading import load_for_command
from rgbdface.cli.options import (DeviceOpt, DtypeOpt, GuidanceOpt, JsonOpt, ThreadsOpt, ModelOpt, OutputDirOpt, QuietOpt, SchedulerOpt, SeedOpt,
                                  StepsOpt)


CROP_SIZE = 512  # the reference crop; the pipeline resizes it to the model's resolution


@handle_errors
def generate_command(
    reference: Annotated[Path, typer.Argument(help="Reference portrait (JPEG/PNG); it is cropped to the face.")],
    output: OutputDirOpt,
    num: Annotated[int, typer.Option("--num", "-n", min=1, help="Number of samples.")] = 4,
    steps: StepsOpt = 25,
    seed: SeedOpt = 0,
    guidance: GuidanceOpt = 1.0,
    scheduler: SchedulerOpt = "ddim",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate RGB + depth pairs of the person in REFERENCE.

    Writes, per sample i: STEM_i_rgb.png, STEM_i_depth.png (16-bit, relative depth:
    1..65535, larger = farther, 0 = no depth) and STEM_i_preview.png (RGB | depth).
    All the files appear together once every one is written, or none does.

    Output size: the model's own (rgbdface.json's image_size; the bundled model: 64 x 64 px,
    the preview twice as wide); the log states it.
    --json adds: samples, generate_seconds (sampling only).
    """
    from rgbdface.data.outputs import OutputPlan
    from rgbdface.utils import check_input_file, write_together

    # 1. Every output path, then the reference: everything that can fail on bad input happens before anything
    #    is written; a missing file or an unusable output before the model's libraries are imported.
    check_input_file(reference, "image file")
    stems = [output / f"{reference.stem}_{i:02d}" for i in range(num)]
    files = [Path(f"{stem}_{kind}.png") for stem in stems for kind in ("rgb", "depth", "preview")]
    plan = OutputPlan().input(reference, "the reference").folder(output, "-o", replaced=False)
    for path in files:
        plan.file(path, "the sample")
    plan.check()
    import numpy as np

    from rgbdface.data.face import crop_face
    from rgbdface.data.io import colorize_depth, load_image, relative_depth_to_u16, save_depth16, save_image
    from rgbdface.models.folder import model_crop_margin
    from rgbdface.pipelines.generate import generate

    crop = crop_face(load_image(reference), size=CROP_SIZE, margin=model_crop_margin(model), name=str(reference))  # the model's framing
    m = load_for_command(model, device, dtype, quiet, stage=1)
    if 1 not in m.meta.stages:
        log("warning: this model has not been trained (stage 0); samples will be noise", quiet)
    t0 = time.perf_counter()
    out = generate(m, crop.image, num_samples=num, steps=steps, guidance=guidance, scheduler=scheduler, seed=seed, progress=not quiet)
    generate_seconds = time.perf_counter() - t0

    # 2. Every sample's files appear together, or none (a full disk leaves nothing behind)
    writers = {}
    for i, stem in enumerate(stems):
        rgb, depth16 = out.rgb[i], relative_depth_to_u16(out.depth[i], out.valid[i])
        preview = np.concatenate([rgb, colorize_depth(out.depth[i], out.valid[i])], axis=1)
        writers[Path(f"{stem}_rgb.png")] = lambda tmp, a=rgb: save_image(tmp, a)
        writers[Path(f"{stem}_depth.png")] = lambda tmp, a=depth16: save_depth16(tmp, a)
        writers[Path(f"{stem}_preview.png")] = lambda tmp, a=preview: save_image(tmp, a)
    write_together(writers)
    report().wrote(*files)
    report().add(samples=num, generate_seconds=round(generate_seconds, 3))
    log(f"wrote {num} RGB + depth samples of {m.meta.image_size}x{m.meta.image_size} px (the model's size) to {output}", quiet)


def register(app: typer.Typer) -> None:
    app.command("generate", cls=ReportingCommand, no_args_is_help=True)(generate_command)
