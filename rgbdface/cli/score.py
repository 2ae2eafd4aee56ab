"""`rgbdface score`: measures of generated results (talking heads, samples), from their files alone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, fail, handle_errors, log, report
from rgbdface.cli.options import FormatOpt, JsonOpt, QuietOpt

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
KINDS = ("auto", "talk", "samples")
FORMATS = ("table", "json")
LABELS = {
    "face_found": "face found ↑", "flicker": "flicker ↓", "colour_de": "colour dE ↓", "mouth_audio_r": "mouth-audio r ↑",
    "depth_face": "depth face ↑", "chroma": "chroma", "reference_chroma": "reference chroma",
    "reference_sensitivity": "reference sensitivity ↑", "psnr": "PSNR ↑", "ssim": "SSIM ↑", "depth_rmse": "depth RMSE ↓",
}


@handle_errors
def score_command(
    result: Annotated[Path, typer.Argument(help="What to score: a talk video (.mp4, .mov, .mkv), or a folder of frames (talk --rgb-frames) or samples (generate's *_rgb.png, or any PNG/JPEG).")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The reference portrait the result was made from; cropped to the face like the result.")],
    kind: Annotated[str, typer.Option("--kind", help="'talk' (frames in time), 'samples' (independent images) or 'auto': a video is talk, a folder is samples unless --audio or --depth-frames is given.")] = "auto",
    audio: Annotated[Optional[Path], typer.Option("--audio", help="Talk: the speech (any file ffmpeg reads) [default: the video's own audio track].")] = None,
    depth_frames: Annotated[Optional[Path], typer.Option("--depth-frames", metavar="DIR", help="Talk: the 16-bit depth frames (talk --depth-frames), for the mouth-audio r and the depth face share.")] = None,
    against: Annotated[Optional[Path], typer.Option("--against", metavar="DIR", help="Samples: the same samples (same seed and count) made from another reference; reports the reference sensitivity.")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", metavar="CLIP_DIR", help="Talk: a rendered clip folder of a prep-depth dataset (rgb_*, depth_*) the result re-creates from its first frame and audio; adds PSNR, SSIM and depth RMSE.")] = None,
    margin: Annotated[float, typer.Option("--margin", min=0.0, help="The face-crop margin of the result's framing (the model's crop_margin; the bundled model: 0.6).")] = 0.6,
    no_detect: Annotated[bool, typer.Option("--no-detect", help="Skip MediaPipe face detection (face found is then not reported).")] = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score generated results from their files: face found, flicker, colour, mouth-audio sync, reference sensitivity, reconstruction.

    Talk: the share of frames where MediaPipe finds a face (frames upscaled to 256 px), flicker (mean absolute change between consecutive frames, 0..255), colour dE (CIE76 between the face centres of the reference and each frame), with --depth-frames the share of frames with a face-sized depth region and the Pearson r between speech loudness and mouth opening per frame, with --gt PSNR / SSIM / depth RMSE against the rendered clip.

    Samples: face found, colour dE, and with --against the reference sensitivity (mean absolute RGB difference, 0..255, between samples of two references at the same seed). Chroma (C*ab of the face centre) shows whether a grey reference gives grey samples.

    --json adds: metrics (what --format json prints).
    """
    import numpy as np

    from rgbdface.metrics import generated as g

    # 1. Check options and inputs (before any work)
    if kind not in KINDS:
        raise fail(f"--kind {kind!r}: expected one of {', '.join(KINDS)}", 2)
    if fmt is not None and fmt not in FORMATS:
        raise fail(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}", 2)
    if as_json and fmt not in (None, "json"):
        raise fail(f"--json prints the results inside its report; it does not go with --format {fmt}", 2)
    if not result.exists():
        raise fail(f"{result}: no such file or folder; pass a talk video or a folder of frames or samples", 1)
    is_video = result.is_file() and result.suffix.lower() in VIDEO_SUFFIXES
    if result.is_file() and not is_video:
        raise fail(f"{result}: not a video ({', '.join(VIDEO_SUFFIXES)}); pass a talk video or a folder of images", 1)
    if kind == "auto":
        kind = "talk" if is_video or audio is not None or depth_frames is not None or gt is not None else "samples"
    if kind == "samples" and (audio or depth_frames or gt):
        raise fail("--audio, --depth-frames and --gt score talk results; they do not go with --kind samples", 2)
    if kind == "talk" and against is not None:
        raise fail("--against compares samples of two references; it does not go with talk results", 2)
    if kind == "talk" and not is_video and audio is None and depth_frames is not None:
        raise fail("a folder of talk frames has no audio track: pass --audio SPEECH", 2)
    for path, what in ((depth_frames, "--depth-frames"), (against, "--against"), (gt, "--gt")):
        if path is not None and not path.is_dir():
            raise fail(f"{what} {path}: not a folder", 1)

    # 2. Read everything
    ref = _reference(reference, margin)
    if is_video:
        from rgbdface.data.video import read_frames

        frames = np.stack(list(read_frames(result, 25.0)))
    else:
        frames = _images(result, kind)
    ref = g.resize(ref, frames.shape[1])
    depth = _depth(depth_frames) if depth_frames is not None else None
    wave = None
    if kind == "talk" and (depth is not None) and (audio is not None or is_video):
        from rgbdface.data.audio import load_audio

        wave = load_audio(audio or result)
    log(f"scoring {len(frames)} {'frames' if kind == 'talk' else 'samples'} of {result}", quiet)

    # 3. Measure
    if kind == "talk":
        scores = g.score_frames(frames, ref, margin, depth=depth, wave=wave, detect=not no_detect)
        if gt is not None:
            gt_rgb = _images(gt, "talk", prefix="rgb_")
            gt_depth = _depth(gt, prefix="depth_")
            if gt_rgb.shape[1:] != frames.shape[1:]:
                raise fail(f"--gt {gt}: frames of {gt_rgb.shape[2]}x{gt_rgb.shape[1]} px, the result's are "
                           f"{frames.shape[2]}x{frames.shape[1]}; pass a clip of the model's size", 1)
            rec = g.score_reconstruction(frames, gt_rgb, depth, gt_depth)
            scores.values |= rec.values
    else:
        other = _images(against, "samples") if against is not None else None
        if other is not None and other.shape != frames.shape:
            raise fail(f"--against {against}: {len(other)} samples of {other.shape[2]} px, but {result} has {len(frames)} "
                       f"of {frames.shape[2]} px; make both with the same --num and model", 1)
        scores = g.score_samples(frames, ref, margin, against=other, detect=not no_detect)

    # 4. Report
    obj = scores.to_dict()
    if as_json:
        report().add(metrics=obj)
    elif (fmt or "table") == "json":
        import json

        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    else:
        _table(obj, str(result))


def _reference(path: Path, margin: float):
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image

    return crop_face(load_image(path), size=256, margin=margin, name=str(path)).image


def _images(folder: Path, kind: str, prefix: str = ""):
    """uint8 RGB images of a folder, in name order (samples: generate's *_rgb.png when there are any)."""
    import numpy as np

    from rgbdface.data.io import load_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name.startswith(prefix))
    if kind == "samples" and any(p.name.endswith("_rgb.png") for p in files):
        files = [p for p in files if p.name.endswith("_rgb.png")]
    if not files:
        raise _no_images(folder)
    images = [load_image(p) for p in files]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise _no_images(folder, f"images of {len(shapes)} different sizes")
    return np.stack(images)


def _depth(folder: Path, prefix: str = "") -> list:
    from rgbdface.data.io import load_depth

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.name.startswith(prefix))
    if not files:
        raise _no_images(folder, "no depth PNG files")
    return [load_depth(p) for p in files]


def _no_images(folder: Path, why: str = "no PNG or JPEG images"):
    from rgbdface.utils import InputError

    return InputError(f"{folder}: {why}; pass a folder of frames or samples of one size")


def _table(obj: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, label in LABELS.items():
        if key in obj:
            v = obj[key]
            table.add_row(label, "n/a" if v is None else f"{v:.3f}")
    for key in ("frames", "depth_frames", "samples"):
        if key in obj:
            table.add_row(key.replace("_", " "), str(obj[key]))
    Console(file=sys.stdout, highlight=False, soft_wrap=False).print(table)


def register(app: typer.Typer) -> None:
    app.command("score", cls=ReportingCommand, no_args_is_help=True)(score_command)
