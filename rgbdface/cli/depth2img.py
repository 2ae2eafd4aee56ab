"""`rgbdface depth2img`: a portrait that follows a depth map, or a depth-driven edit of one region (paper §5.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, fail, handle_errors, log, report
from rgbdface.cli.loading import load_for_command
from rgbdface.cli.options import (DeviceOpt, DtypeOpt, GuidanceOpt, JsonOpt, ThreadsOpt, ModelOpt, OutputFileOpt, QuietOpt, SchedulerOpt, SeedOpt,
                                  StepsOpt)
from rgbdface.utils import check_input_file


@handle_errors
def depth2img_command(
    depth: Annotated[Path, typer.Argument(metavar="DEPTH", help="Depth map (16-bit PNG or .npy; larger = farther, 0 = no depth).", show_default=False)],
    output: OutputFileOpt,
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", help="Portrait whose identity the result takes. Needed without --image; with --image it defaults to the image.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", "-i", help="Edit this image: regenerate only --region to follow DEPTH (which then has this image's size).")] = None,
    region: Annotated[Optional[Path], typer.Option("--region", help="With --image: mask of the image's size; pixels >= 128 (any channel) are regenerated, the rest is kept exactly.")] = None,
    steps: StepsOpt = 25,
    seed: SeedOpt = 0,
    scheduler: SchedulerOpt = "ddim",
    guidance: GuidanceOpt = 1.0,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate the portrait that follows DEPTH with the identity of --reference, or edit --image inside --region.

    The stage-2 model generates the RGB latent with the depth latent known (m_rgb = 1, m_depth = 0); the ReferenceNet carries the identity. DEPTH is a 16-bit PNG or .npy, larger = farther, 0 = no depth, in any units (normalised per image by its 2%/98% quantiles, as in training), e.g. from estimate-depth, prep-depth or generate. Depth maps are cropped and resized by normalised interpolation, so pixels without depth never blend into pixels with depth.

    Output size: the model generates at its own size (rgbdface.json's image_size; the bundled model: 64 x 64 px) and the result is resized to the face crop's: 512 x 512, or a face-crop DEPTH's own size; region mode writes the image's size. The log states both.

    Full mode (--reference): DEPTH of the reference's size is a full-frame depth of the reference's framing; it is cropped with the reference's face box and the output is that 512 x 512 face crop. A DEPTH of another size framed like a face crop (the face about 40% of its width, centred: from generate or prep-depth) is used as it is and the output has its size. Any other DEPTH is a full frame of another photo (e.g. from estimate-depth): it is cropped around its depth pixels with the model's framing (the log says so) and the output is a 512 x 512 face crop.

    Region mode (--image, --region; paper Fig. 5): DEPTH and the mask have the image's size; mask pixels >= 128 (any channel) are regenerated. Inside the image's face crop the model regenerates every latent cell the region touches, with the rest of the image and the whole edited depth known, and the result replaces the image's pixels inside the region only: elsewhere the output equals the image, pixel for pixel. Region pixels outside the face crop are kept (a warning says how many). The identity comes from --reference, by default the image itself.

    Errors are one line on stderr with nothing written: an unreadable image or depth, no face, a depth or mask of the wrong size, an empty region, a model without stage 2.

    --json adds: mode ('full' or 'region'), changed_pixels (region mode; null in full mode).
    """
    from rgbdface.data.io import IMAGE_SUFFIXES, load_depth, load_image, save_image
    from rgbdface.data.outputs import OutputPlan
    from rgbdface.models.folder import model_crop_margin

    # 1. Check options and that every input is there (before the model's libraries load)
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise fail(f"-o {output}: unknown image suffix {output.suffix!r}; use .png or .jpg", 2)
    if (image is None) != (region is None):
        raise fail("--image and --region go together (regenerate the region of the image)", 2)
    if image is None and reference is None:
        raise fail("--reference REF.jpg is needed (or --image with --region to edit an image)", 2)
    for path in (depth, reference, image, region):
        if path is not None:
            check_input_file(path)
    plan = OutputPlan().file(output, "-o").input(depth, "the depth")
    for flag, path in (("--reference", reference), ("--image", image), ("--region", region)):
        if path is not None:
            plan.input(path, flag)
    plan.check()  # the output is no input, and its location is writable
    from rgbdface.pipelines.depth2img import prepare_depth2img, run_depth2img

    # 2. Read and align every input before loading the model
    d = load_depth(depth)
    ref = load_image(reference) if reference is not None else None
    img = load_image(image) if image is not None else None
    mask = load_image(region).max(axis=2) >= 128 if region is not None else None
    names = {"depth": str(depth), "reference": str(reference), "image": str(image), "region": str(region)}
    task = prepare_depth2img(d, ref, img, mask, names=names, margin=model_crop_margin(model))  # the model's framing

    # 3. Generate
    m = load_for_command(model, device, dtype, quiet, stage=2)
    m.require_stage(2, "depth2img")
    result = run_depth2img(m, task, steps=steps, seed=seed, scheduler=scheduler, guidance=guidance, progress=not quiet)

    # 4. Write
    save_image(output, result.image)
    report().wrote(output)
    report().add(mode="full" if result.changed is None else "region",
                 changed_pixels=None if result.changed is None else int(result.changed.sum()))
    if result.changed is not None and result.changed.sum() < task.region_full.sum():
        log(f"warning: {int(task.region_full.sum() - result.changed.sum())} region pixels lie outside the face crop and were kept", quiet)
    if task.cropped_from_full_frame:
        log(f"{depth}: a full-frame depth map ({d.shape[1]}x{d.shape[0]}, not framed as a face crop): cropped around its face", quiet)
    h, w = result.image.shape[:2]
    what = f"regenerated {int(result.changed.sum())} pixels of {image}" if result.changed is not None else "generated the face crop"
    log(f"{what} at the model's {m.meta.image_size}x{m.meta.image_size} px → {output} ({w}x{h})", quiet)


def register(app: typer.Typer) -> None:
    app.command("depth2img", cls=ReportingCommand, no_args_is_help=True)(depth2img_command)
