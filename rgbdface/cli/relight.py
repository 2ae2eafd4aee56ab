"""`rgbdface relight`: new lights on a portrait, from its depth (paper §5.4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterable, Optional

import typer

from rgbdface.cli.common import ReportingCommand, fail, handle_errors, log, report
from rgbdface.cli.estimate_depth import EnsembleOpt
from rgbdface.cli.options import DepthFlipOpt, DepthStepsOpt, DeviceOpt, DtypeOpt, JsonOpt, ThreadsOpt, ModelOpt, OutputFileOpt, QuietOpt, SchedulerOpt, SeedOpt

if TYPE_CHECKING:
    import numpy as np

DepthOpt = Annotated[Optional[Path], typer.Option("--depth", "-d", help="Depth map of the image's size (16-bit PNG, e.g. from estimate-depth or prep-depth, or a .npy of floats; larger = farther, 0 = no depth). Without it, the face's depth is estimated first (as estimate-depth does; --model, --steps, --flip, --seed, --scheduler, --ensemble).")]
LightOpt = Annotated[Optional[list[str]], typer.Option("--light", "-l", metavar="X,Y,Z[,I][,R,G,B]", help="A directional light toward X,Y,Z: x to the image's right, y up, z toward the viewer (1,0,0 = from the right; 0,0,1 = frontal); then optionally its intensity I (default 1: as strong as the photo's own light, estimated, see --photo-light) and colour R,G,B (default 1,1,1; 1,0.8,0.6 is warm). Repeat for more lights.")]
PhotoLightOpt = Annotated[Optional[str], typer.Option("--photo-light", metavar="X,Y,Z", show_default=False, help="The direction of the photo's own light, when known (same axes as --light). Default: estimated from the face's shading, its horizontal angle only (within 45 degrees of the view axis; the vertical one would follow the face's albedo, darker from brows to chin). Relighting with it at intensity 1 changes little.")]
AmbientOpt = Annotated[str, typer.Option("--ambient", "-a", metavar="A|R,G,B", help="Ambient light added to the shading everywhere on the surface: gray A or a colour R,G,B.")]
ReliefOpt = Annotated[float, typer.Option("--relief", help="Assumed relief for relative depth: the depth's range spans this fraction of the face's width (0.5 = a hemisphere). Ignored with --depth-scale.")]
DepthScaleOpt = Annotated[Optional[float], typer.Option("--depth-scale", help="Pixels per depth unit, when the depth's scale is known (e.g. 1 if depth is in pixels). Default: from --relief.")]
RegionOpt = Annotated[str, typer.Option("--region", help="What is relit: 'head' (the face's depth extended to hair, ears and neck, found by MediaPipe's selfie segmentation) or 'face' (where the depth is, holes filled).")]
FeatherOpt = Annotated[Optional[float], typer.Option("--feather", show_default=False, help="Width in pixels over which the relighting fades in from the region's outline (a smoothstep; 0 = a hard cut) [default: 15% of the face's width].")]
SmoothOpt = Annotated[Optional[float], typer.Option("--smooth", show_default=False, help="Radius in pixels of the image-guided smoothing of the depth (0 = none) [default: 1/12 of the face's width, which removes the facets of depth upsampled from a model's resolution].")]
EnvOpt = Annotated[Optional[Path], typer.Option("--env", show_default=False, help="Environment light: an equirectangular image (2:1; 8/16-bit sRGB, or a .npy of linear radiance), its centre the direction the camera looks, its left and right edges behind the camera; second-order spherical harmonics. Added to the --light lights.")]
EnvIntensityOpt = Annotated[float, typer.Option("--env-intensity", help="Multiplies the environment's radiance (1: an image of white 1.0 everywhere shades like ambient 1).")]
OrbitOpt = Annotated[Optional[int], typer.Option("--orbit", min=2, show_default=False, help="Write a video (-o ending in .mp4) of N frames at 25 fps: one light circling the face 60 degrees off the view axis, starting above; its intensity and colour from the first --light (default white, 1).")]
NormalsOpt = Annotated[Optional[Path], typer.Option("--normals", help="Also write the normal map here (RGB = (n + 1) / 2; black outside the region).")]
ShadingOpt = Annotated[Optional[Path], typer.Option("--shading", help="Also write the new shading here (linear, clipped to 0..1; gray for white lights, else RGB; black outside the region).")]
AlbedoOpt = Annotated[Optional[Path], typer.Option("--albedo", help="Also write the albedo estimate here (image / the photo's estimated shading, sRGB; black outside the region).")]

ORBIT_FPS = 25


@handle_errors
def relight_command(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The image to relight (JPEG, PNG, ...).", show_default=False)],
    output: OutputFileOpt,
    depth: DepthOpt = None,
    light: LightOpt = None,
    ambient: AmbientOpt = "0.25",
    photo_light: PhotoLightOpt = None,
    env: EnvOpt = None,
    env_intensity: EnvIntensityOpt = 1.0,
    region: RegionOpt = "head",
    feather: FeatherOpt = None,
    smooth: SmoothOpt = None,
    relief: ReliefOpt = 0.5,
    depth_scale: DepthScaleOpt = None,
    orbit: OrbitOpt = None,
    normals: NormalsOpt = None,
    shading: ShadingOpt = None,
    albedo: AlbedoOpt = None,
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
    """Relight a portrait from its depth: the photo's own shading is estimated and divided out, new lights multiplied in, faded into the untouched image.

    The depth (given, or estimated with the stage-2 model) is smoothed at the image's resolution, guided by the image, into a surface; with --region head it is extended to the hair, ears and neck. Normals come from it under an orthographic camera: pixel (row v, column u) is the point (u, -v, -depth * s), with s = --depth-scale pixels per depth unit, or chosen so that the depth range spans --relief of the face's width. The photo's shading is that of its own light (--photo-light, or its horizontal angle estimated from the face's luminance) at intensity 1 plus the ambient; relit = image * new shading / that shading, in linear light (darkening fades out where the photo is near black), faded in over --feather pixels from the region's outline. Outside the region the image is unchanged. Outputs are written only when everything has succeeded.

    Output size: the image's own (only an estimated depth is made at the model's size, 64 x 64 px for the bundled model, and resized onto the face).

    --json adds: lights (their count), relit_pixels (inside the region), feather (pixels), depth ('given' or 'estimated'), photo_light (the photo's light direction x, y, z, estimated or --photo-light), frames (with --orbit).
    """
    from rgbdface.data.io import IMAGE_SUFFIXES, load_image
    from rgbdface.data.outputs import OutputPlan
    from rgbdface.pipelines.relight import REGIONS, Light, parse_ambient

    # 1. Check options before reading anything
    try:
        lights = [Light.parse(text) for text in light or []]
    except ValueError as e:
        raise fail(f"--light: {e}", 2) from None
    if not lights and env is None and orbit is None:
        raise fail("--light X,Y,Z (or --env FILE, or --orbit N) is needed (x right, y up, z toward the viewer; e.g. --light 1,0,1)", 2)
    try:
        if photo_light is not None and len(photo_light.split(",")) != 3:
            raise ValueError(f"direction {photo_light!r}: expected X,Y,Z (x right, y up, z toward the viewer), e.g. -1,0,1")
        own = Light.parse(photo_light).direction if photo_light is not None else None
    except ValueError as e:
        raise fail(f"--photo-light: {e}", 2) from None
    try:
        amb = parse_ambient(ambient)
    except ValueError as e:
        raise fail(f"--ambient: {e}", 2) from None
    if region not in REGIONS:
        raise fail(f"--region {region!r}: expected one of {', '.join(REGIONS)}", 2)
    if orbit is not None and output.suffix.lower() != ".mp4":
        raise fail(f"--orbit writes a video: -o {output} must end in .mp4", 2)
    if orbit is None and output.suffix.lower() not in IMAGE_SUFFIXES:
        raise fail(f"--output {output}: unknown image suffix {output.suffix!r}; use .png or .jpg (or .mp4 with --orbit N)", 2)
    outputs = {"--output": output, "--normals": normals, "--shading": shading, "--albedo": albedo}
    for flag, path in list(outputs.items())[1:]:
        if path is not None and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise fail(f"{flag} {path}: unknown image suffix {path.suffix!r}; use .png or .jpg", 2)
    plan = OutputPlan().input(image, "the image")
    for flag, path in (("--depth", depth), ("--env", env)):
        if path is not None:
            plan.input(path, flag)
    for flag, path in outputs.items():
        if path is not None:
            plan.file(path, flag)
    plan.check()  # no two outputs the same file, none an input, each location writable
    for flag, value in (("--feather", feather), ("--smooth", smooth)):
        if value is not None and not value >= 0:
            raise fail(f"{flag} {value}: expected a number of pixels >= 0", 2)
    if not env_intensity >= 0:
        raise fail(f"--env-intensity {env_intensity}: expected a number >= 0", 2)
    if depth_scale is not None and not depth_scale >= 0:
        raise fail(f"--depth-scale {depth_scale}: expected a number >= 0 (pixels per depth unit)", 2)
    if depth_scale is None and not relief > 0:
        raise fail(f"--relief {relief}: expected a number > 0 (or give --depth-scale)", 2)

    # 2. Read the image, the environment and the depth
    rgb = load_image(image)  # [H, W, 3] uint8
    env_sh = load_environment(env, env_intensity) if env is not None else None
    estimate = dict(model=model, steps=steps, flip=flip, seed=seed, scheduler=scheduler, ensemble=ensemble, device=device, dtype=dtype, quiet=quiet)
    d = load_relight_depth(rgb, image, depth, estimate)  # [H, W] float32

    # 3. Relight
    from rgbdface.pipelines.relight import albedo_to_rgb, normals_to_rgb, orbit_lights, relight, relight_surface, shading_to_gray, head_region

    person = None
    if region == "head":
        from rgbdface.data.face import person_mask

        person = person_mask(rgb)
    head = head_region(person, d > 0, rgb) if person is not None else None
    surface = relight_surface(d, rgb, head=head, smooth=smooth, depth_scale=depth_scale, relief=relief)
    kw = dict(ambient=amb, env_sh=env_sh, feather=feather, surface=surface)
    result = relight(rgb, d, lights, photo_light=own, **kw)

    # 4. Write every output, or none
    layers = {} if orbit is not None else {output: result.image}
    if normals is not None:
        layers[normals] = normals_to_rgb(result.normals, result.region)
    if shading is not None:
        layers[shading] = shading_to_gray(result.shading)
    if albedo is not None:
        layers[albedo] = albedo_to_rgb(result.albedo)
    if orbit is not None:
        circling = orbit_lights(orbit, lights[0] if lights else None)
        frames = (relight(rgb, d, [l], original=result.original_shading, photo_light=result.photo_light, **kw).image for l in circling)
        _write_all(layers, video=(output, frames))
        report().add(frames=orbit)
    else:
        _write_all(layers)
    report().wrote(*([output] if orbit is not None else []), *layers)
    relit = int(result.region.sum())
    report().add(lights=len(lights), relit_pixels=relit, feather=round(result.feather, 2), depth="given" if depth is not None else "estimated",
                 photo_light=[round(float(v), 3) for v in result.photo_light])
    log(f"relit {image} with {len(lights) or 'an orbiting'} light(s){' and an environment' if env is not None else ''} over {relit} pixels → {output} ({rgb.shape[1]}x{rgb.shape[0]}, the image's size)", quiet)


def load_environment(path: Path, intensity: float = 1.0) -> "np.ndarray":
    """An environment file → spherical-harmonic coefficients [9, 3]; one-line InputError for a bad file."""
    import numpy as np

    from rgbdface.pipelines.relight import env_to_sh, srgb_to_linear
    from rgbdface.utils import InputError

    if not path.exists():
        raise InputError(f"--env {path}: no such file; check the path")
    try:
        if path.suffix.lower() == ".npy":
            radiance = np.load(path, allow_pickle=False).astype(np.float64)
        else:
            import imageio.v3 as iio

            raw = np.asarray(iio.imread(path))
            top = 65535.0 if raw.dtype == np.uint16 else 255.0
            radiance = srgb_to_linear(raw[..., :3] / top) if raw.ndim == 3 else srgb_to_linear(raw / top)
    except Exception as e:
        raise InputError(f"--env {path}: not a readable image or .npy ({type(e).__name__}); pass an equirectangular PNG/JPEG or a .npy") from None
    try:
        return env_to_sh(radiance) * intensity
    except ValueError as e:
        raise InputError(f"--env {path}: {e}") from None


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
    """The face's depth as estimate-depth writes it (1..65535 in the face region, 0 elsewhere), at the image's size."""
    from rgbdface.cli.loading import load_for_command
    from rgbdface.models.folder import model_crop_margin
    from rgbdface.pipelines.depth import estimate_depths, prepare_depth_input

    from rgbdface.data.face import NoFaceError

    margin = model_crop_margin(model)  # the face is cropped the model's way, and first: no model is loaded for a bad image
    try:
        task = prepare_depth_input(rgb, name=str(image_path), margin=margin)
    except NoFaceError as e:
        raise NoFaceError(f"{e}; without --depth, relight estimates a face's depth (pass --depth d.png for any other image)") from None
    m = load_for_command(model, device, dtype, quiet, stage=2)
    m.require_stage(2, "relight without --depth (depth estimation)")
    log(f"no --depth: estimating the depth of {image_path}", quiet)
    result = estimate_depths(m, [task], steps=steps, flip=flip, seed=seed, scheduler=scheduler, ensemble=ensemble, progress=not quiet)[0]
    return result.to_units()  # unrounded; relight_surface smooths away the facets of the model's resolution


def _write_all(layers: dict[Path, "np.ndarray"], video: tuple[Path, Iterable["np.ndarray"]] | None = None) -> None:
    """Write each image (and the video) to a temporary file beside its target; rename them all only if every write succeeded."""
    from rgbdface.data.io import save_image
    from rgbdface.utils import write_together

    writers = {path: (lambda tmp, img=img: save_image(tmp, img)) for path, img in layers.items()}
    if video is not None:
        path, frames = video
        writers[path] = lambda tmp: _write_video(tmp, frames, name=path)
    write_together(writers)


def _write_video(path: Path, frames: Iterable["np.ndarray"], name: Path | None = None) -> None:
    from rgbdface.data.video import VideoWriter

    with VideoWriter(path, fps=ORBIT_FPS, name=name) as writer:  # messages name the target, not the temporary file
        for frame in frames:
            writer.write(frame)


def register(app: typer.Typer) -> None:
    app.command("relight", cls=ReportingCommand)(relight_command)
