"""`rgbdface relight`: new directional lights on a portrait, from its depth (paper §5.4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, fail, handle_errors, log, report, write_all
from rgbdface.cli.estimate_depth import EnsembleOpt
from rgbdface.cli.options import DepthFlipOpt, DepthStepsOpt, DeviceOpt, DtypeOpt, JsonOpt, ThreadsOpt, ModelOpt, OutputFileOpt, QuietOpt, SchedulerOpt, SeedOpt

if TYPE_CHECKING:
    import numpy as np

DepthOpt = Annotated[Optional[Path], typer.Option("--depth", "-d", help="Depth map of the image's size (16-bit PNG or .npy; larger = farther, 0 = no depth). The image is relit where depth > 0. Without it, the face's depth is estimated first (as estimate-depth does; --model, --steps, --flip, --seed, --scheduler, --ensemble).")]
LightOpt = Annotated[Optional[list[str]], typer.Option("--light", "-l", metavar="X,Y,Z[,I]", help="A directional light 'X,Y,Z' or 'X,Y,Z,INTENSITY' toward the light: x to the image's right, y up, z toward the viewer (1,0,0 = from the right; 0,0,1 = frontal). Repeat for more lights.")]
AmbientOpt = Annotated[float, typer.Option("--ambient", "-a", help="Ambient light added to the shading everywhere on the surface.")]
ReliefOpt = Annotated[float, typer.Option("--relief", help="Assumed relief for relative depth: the valid region's depth range spans this fraction of its width (0.5 = a hemisphere). Ignored with --depth-scale.")]
DepthScaleOpt = Annotated[Optional[float], typer.Option("--depth-scale", help="Pixels per depth unit, when the depth's scale is known (e.g. 1 if depth is in pixels). Default: from --relief.")]
NormalsOpt = Annotated[Optional[Path], typer.Option("--normals", help="Also write the normal map here (RGB = (n + 1) / 2; black = no depth).")]
ShadingOpt = Annotated[Optional[Path], typer.Option("--shading", help="Also write the shading layer here (gray, clipped to 0..1).")]


@handle_errors
def relight_command(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The image to relight (JPEG, PNG, ...).", show_default=False)],
    output: OutputFileOpt,
    depth: DepthOpt = None,
    light: LightOpt = None,
    ambient: AmbientOpt = 0.25,
    relief: ReliefOpt = 0.5,
    depth_scale: DepthScaleOpt = None,
    normals: NormalsOpt = None,
    shading: ShadingOpt = None,
    model: ModelOpt = None,
    steps: DepthStepsOpt = None,
    flip: DepthFlipOpt = None,
    seed: SeedOpt = 0,
    scheduler: SchedulerOpt = "ddim",
    ensemble: EnsembleOpt = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Relight a portrait from its depth: Lambertian shading from directional lights plus ambient, multiplied with the image where depth > 0.

    Normals come from finite differences under an orthographic camera: pixel (row v, column u) is the point (u, -v, -depth * s), with s = --depth-scale pixels per depth unit, or chosen so that the depth range spans --relief of the region's width. Outside depth > 0 the image is unchanged. Without --depth, the face's depth is estimated first with the stage-2 model (the face region is relit). Outputs are written only when everything has succeeded.

    --json adds: lights (their count), relit_pixels, depth ('given' or 'estimated').
    """
    from rgbdface.data.io import IMAGE_SUFFIXES, load_image
    from rgbdface.pipelines.relight import Light, normals_to_rgb, relight, shading_to_gray

    # 1. Check options before reading anything
    if not light:
        raise fail("--light X,Y,Z is needed (x right, y up, z toward the viewer; e.g. --light 1,0,1)", 2)
    try:
        lights = [Light.parse(text) for text in light]
    except ValueError as e:
        raise fail(f"--light: {e}", 2) from None
    outputs = {"--output": output, "--normals": normals, "--shading": shading}
    for flag, path in outputs.items():
        if path is not None and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise fail(f"{flag} {path}: unknown image suffix {path.suffix!r}; use .png or .jpg", 2)
    given = [p.resolve() for p in outputs.values() if p is not None]
    if len(set(given)) != len(given):
        raise fail("-o, --normals and --shading must name different files", 2)
    if not ambient >= 0:
        raise fail(f"--ambient {ambient}: expected a number >= 0", 2)
    if depth_scale is not None and not depth_scale >= 0:
        raise fail(f"--depth-scale {depth_scale}: expected a number >= 0 (pixels per depth unit)", 2)
    if depth_scale is None and not relief > 0:
        raise fail(f"--relief {relief}: expected a number > 0 (or give --depth-scale)", 2)

    # 2. Read the image and its depth
    rgb = load_image(image)  # [H, W, 3] uint8
    estimate = dict(model=model, steps=steps, flip=flip, seed=seed, scheduler=scheduler, ensemble=ensemble, device=device, dtype=dtype, quiet=quiet)
    d = load_relight_depth(rgb, image, depth, estimate)  # [H, W] float32

    # 3. Relight
    result = relight(rgb, d, lights, ambient=ambient, depth_scale=depth_scale, relief=relief)

    # 4. Write every output, or none
    layers = {output: result.image}
    if normals is not None:
        layers[normals] = normals_to_rgb(result.normals, result.valid)
    if shading is not None:
        layers[shading] = shading_to_gray(result.shading)
    _write_all(layers)
    report().wrote(*layers)
    report().add(lights=len(lights), relit_pixels=int(result.valid.sum()), depth="given" if depth is not None else "estimated")
    log(f"relit {image} with {len(lights)} light(s) over {int(result.valid.sum())} pixels → {output}", quiet)


def load_relight_depth(rgb: "np.ndarray", image_path: Path, depth_path: Path | None, estimate: dict | None = None) -> "np.ndarray":
    """The depth to relight with: the given map (checked against the image's size), or an estimate.

    estimate: options for `estimate_relight_depth` when there is no depth map.
    """
    from rgbdface.data.io import load_depth
    from rgbdface.utils import InputError

    if depth_path is None:
        return estimate_relight_depth(rgb, image_path, **(estimate or {}))
    d = load_depth(depth_path)
    h, w = rgb.shape[:2]
    if d.shape != (h, w):
        raise InputError(f"{depth_path}: depth is {d.shape[1]}x{d.shape[0]} but {image_path} is {w}x{h}; pass the depth map of this image")
    if not (d > 0).any():
        raise InputError(f"{depth_path}: no pixel has depth (all 0); nothing to relight")
    return d


def estimate_relight_depth(rgb: "np.ndarray", image_path: Path, model: Path | None = None, steps: int | None = None, flip: bool | None = None, seed: int = 0,
                           scheduler: str = "ddim", ensemble: int = 1, device: str = "auto", dtype: str = "auto",
                           quiet: bool = False) -> "np.ndarray":
    """The face's depth as estimate-depth writes it (1..65535 in the face region, 0 elsewhere), at the image's size,
    smoothed by the factor it was upsampled with from the model's resolution."""
    import numpy as np

    from rgbdface.cli.loading import load_for_command
    from rgbdface.models.folder import model_crop_margin
    from rgbdface.pipelines.depth import estimate_depths, prepare_depth_input

    from rgbdface.data.face import NoFaceError

    margin = model_crop_margin(model)  # the face is cropped the model's way, and first: no model is loaded for a bad image
    try:
        task = prepare_depth_input(rgb, name=str(image_path), margin=margin)
    except NoFaceError as e:
        raise NoFaceError(f"{e}; without --depth, relight estimates a face's depth (pass --depth d.png for any other image)") from None
    m = load_for_command(model, device, dtype, quiet)
    m.require_stage(2, "relight without --depth (depth estimation)")
    log(f"no --depth: estimating the depth of {image_path}", quiet)
    result = estimate_depths(m, [task], steps=steps, flip=flip, seed=seed, scheduler=scheduler, ensemble=ensemble, progress=not quiet)[0]
    # The model's depth is upsampled from its resolution: smooth away the facets that would show as blocks.
    from rgbdface.pipelines.relight import smooth_depth

    x0, _, x1, _ = result.crop.box
    upscale = (x1 - x0) / m.meta.image_size
    return smooth_depth(result.to_units(), sigma=upscale).astype(np.float32) if upscale > 1 else result.to_units()


def _write_all(layers: dict[Path, "np.ndarray"]) -> None:
    """Write each image to a temporary file beside its target; rename them all only if every write succeeded."""
    from rgbdface.data.io import save_image

    write_all({path: (lambda tmp, img=img: save_image(tmp, img)) for path, img in layers.items()})


def register(app: typer.Typer) -> None:
    app.command("relight", cls=ReportingCommand)(relight_command)
