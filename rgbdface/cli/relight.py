"""`rgbdface relight`: new directional lights on a portrait, from its depth (paper §5.4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from rgbdface.cli.common import fail, handle_errors, log
from rgbdface.cli.options import OutputFileOpt, QuietOpt

if TYPE_CHECKING:
    import numpy as np

DepthOpt = Annotated[Optional[Path], typer.Option("--depth", "-d", help="Depth map of the image's size (16-bit PNG or .npy; larger = farther, 0 = no depth). The image is relit where depth > 0.")]
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
    quiet: QuietOpt = False,
) -> None:
    """Relight a portrait from its depth: Lambertian shading from directional lights plus ambient, multiplied with the image where depth > 0.

    Normals come from finite differences under an orthographic camera: pixel (row v, column u) is the point (u, -v, -depth * s), with s = --depth-scale pixels per depth unit, or chosen so that the depth range spans --relief of the region's width. Outside depth > 0 the image is unchanged. Outputs are written only when everything has succeeded.
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
    d = load_relight_depth(rgb, image, depth)  # [H, W] float32

    # 3. Relight
    result = relight(rgb, d, lights, ambient=ambient, depth_scale=depth_scale, relief=relief)

    # 4. Write every output, or none
    layers = {output: result.image}
    if normals is not None:
        layers[normals] = normals_to_rgb(result.normals, result.valid)
    if shading is not None:
        layers[shading] = shading_to_gray(result.shading)
    _write_all(layers)
    log(f"relit {image} with {len(lights)} light(s) over {int(result.valid.sum())} pixels → {output}", quiet)


def load_relight_depth(rgb: "np.ndarray", image_path: Path, depth_path: Path | None) -> "np.ndarray":
    """The depth to relight with: the given map (checked against the image's size), or an estimate."""
    from rgbdface.data.io import load_depth
    from rgbdface.utils import InputError

    if depth_path is None:
        # Without --depth, this is where the image's depth is estimated (estimate-depth's library call).
        raise InputError(f"{image_path}: relight needs a depth map for now; pass --depth d.png (e.g. from a depth estimator)")
    d = load_depth(depth_path)
    h, w = rgb.shape[:2]
    if d.shape != (h, w):
        raise InputError(f"{depth_path}: depth is {d.shape[1]}x{d.shape[0]} but {image_path} is {w}x{h}; pass the depth map of this image")
    if not (d > 0).any():
        raise InputError(f"{depth_path}: no pixel has depth (all 0); nothing to relight")
    return d


def _write_all(layers: dict[Path, "np.ndarray"]) -> None:
    """Write each image to a temporary file beside its target; rename them all only if every write succeeded."""
    import contextlib

    from rgbdface.data.io import save_image
    from rgbdface.utils import atomic_path

    with contextlib.ExitStack() as stack:
        for path, img in layers.items():
            tmp = stack.enter_context(atomic_path(path))
            save_image(tmp, img)


def register(app: typer.Typer) -> None:
    app.command("relight")(relight_command)
