"""`rgbdface talk`: reference portrait + speech → RGB + depth talking-head video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rgbdface.cli.common import ReportingCommand, fail, handle_errors, log, report
from rgbdface.cli.loading import load_for_command
from rgbdface.cli.options import DeviceOpt, DtypeOpt, JsonOpt, TalkGuidanceOpt, ThreadsOpt, ModelOpt, QuietOpt, SchedulerOpt, SeedOpt, StepsOpt
from rgbdface.utils import InputError, check_input_file

CROP_SIZE = 512  # the reference crop; the pipeline resizes it to the model's resolution


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _require_motion_stage(model: Path | None) -> None:
    """Refuse a model without stage 3 from its metadata alone, before any weights are read."""
    from rgbdface.models.folder import STAGE_NAMES, read_meta

    stages = read_meta(model).get("stages", [])
    if 3 not in stages:
        have = ", ".join(f"{s} ({STAGE_NAMES.get(s, '?')})" for s in stages)
        raise InputError(f"talk needs a model that reached stage 3 ({STAGE_NAMES[3]}); this one has stages {have}; "
                         "train one with `rgbdface train-motion`")


@handle_errors
def talk_command(
    reference: Annotated[Path, typer.Argument(help="Reference portrait (JPEG/PNG); it is cropped to the face.")],
    audio: Annotated[Path, typer.Argument(help="Speech: any file ffmpeg reads (wav, mp3, m4a, the audio of a video).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output video (.mp4, .mov or .mkv): H.264, yuv420p, 25 fps, with the audio.")],
    depth_video: Annotated[Optional[Path], typer.Option("--depth-video", help="Also write the depth as a colour-mapped video (with the audio).")] = None,
    side_by_side: Annotated[bool, typer.Option("--side-by-side", help="Make --output show RGB | depth side by side.")] = False,
    rgb_frames: Annotated[Optional[Path], typer.Option("--rgb-frames", help="Also write every RGB frame as PNG into this folder (000000.png, ...).")] = None,
    depth_frames: Annotated[Optional[Path], typer.Option("--depth-frames", help="Also write every depth frame as 16-bit PNG into this folder (1..65535, larger = farther, 0 = no depth).")] = None,
    mesh_frames: Annotated[Optional[Path], typer.Option("--mesh-frames", help="Also write a coloured PLY mesh of every frame's depth into this folder (a mesh sequence).")] = None,
    max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", min=0.04, help="Use only the first SECONDS of the audio.")] = None,
    wav2vec: Annotated[Optional[Path], typer.Option("--wav2vec", help="wav2vec 2.0 folder, for a model trained on wav2vec features whose recorded folder moved.")] = None,
    steps: StepsOpt = 25,
    seed: SeedOpt = 0,
    guidance: TalkGuidanceOpt = None,
    scheduler: SchedulerOpt = "ddim",
    noise: Annotated[str, typer.Option("--noise", help="Initial noise: 'video' (one noise for every frame: frames change only with the speech) or 'frame' (fresh noise per frame, as stage 3 trains by default; the frames flicker).")] = "video",
    strength: Annotated[float, typer.Option("--strength", help="1 = start from pure noise (the paper). Below 1: start every clip from the reference itself and its estimated depth, noised to the level of the last STRENGTH share of the --steps, and take only those steps; lower keeps more of the reference (its look and background) and leaves the speech less to change.")] = 1.0,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cpu_threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Animate the person in REFERENCE speaking AUDIO: an RGB video and, jointly, its depth.

    Needs a model that reached stage 3 (`train-motion`). The video has ceil(duration x 25)
    frames and ends with the audio; frames are written as they are made, and every output
    appears only once it is complete.

    Output size: frames are made at the model's own size (rgbdface.json's image_size; the
    bundled model: 64 x 64 px), and so are the videos and frame files (--side-by-side: twice
    as wide); the log states it.

    --json adds: frames, clips, audio_seconds (the audio covered) and generate_seconds.
    """
    from rgbdface.data.video_outputs import check_outputs
    from rgbdface.models.folder import model_crop_margin

    # Everything that can fail on bad input happens before the model is loaded; a missing file or a
    # bad option even before the model's libraries are imported.
    if noise not in ("video", "frame"):
        raise fail(f"--noise {noise!r}: expected 'video' or 'frame'", 2)
    if not 0 < strength <= 1 or round(strength * steps) < 1:
        raise fail(f"--strength {strength}: expected a share in (0, 1] that leaves at least one of the {steps} steps", 2)
    check_outputs(output, depth_video, rgb_frames, depth_frames, mesh_frames, inputs=(reference, audio))
    check_input_file(reference, "image file")
    check_input_file(audio)
    _require_motion_stage(model)
    from rgbdface.data.audio import SAMPLE_RATE, load_audio
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image
    from rgbdface.pipelines.talk import talk

    wave = load_audio(audio, max_seconds=max_seconds)
    crop = crop_face(load_image(reference), size=CROP_SIZE, margin=model_crop_margin(model), name=str(reference))  # the model's framing
    m = load_for_command(model, device, dtype, quiet, stage=3 if strength == 1 else {2, 3})
    m.require_stage(3, "talk")
    encoder = m.motion.audio_encoder(wav2vec, device=m.device)

    def progress(p) -> None:
        rate = p.elapsed / max(p.frames_done, 1)
        log(f"clip {p.clip}/{p.clips}: {p.frames_done}/{p.frames} frames, {rate:.2f} s/frame, "
            f"elapsed {_clock(p.elapsed)}, ETA {_clock(p.eta)}", quiet)

    size = m.meta.image_size
    log(f"{audio}: {wave.size / SAMPLE_RATE:.2f} s of audio; frames of {size * (2 if side_by_side else 1)}x{size} px (the model's size)", quiet)
    result = talk(m, crop.image, audio, wave, output, depth_video=depth_video, side_by_side=side_by_side,
                  rgb_frames=rgb_frames, depth_frames=depth_frames, mesh_frames=mesh_frames, steps=steps, guidance=guidance,
                  scheduler=scheduler, seed=seed, audio_encoder=encoder, on_clip=progress, noise=noise, strength=strength)
    report().wrote(*result.outputs)
    report().add(frames=result.frames, clips=result.clips, audio_seconds=round(result.seconds, 3),
                 generate_seconds=round(result.elapsed, 3))
    log(f"wrote {result.frames} frames ({result.seconds:.2f} s) in {_clock(result.elapsed)} to "
        + ", ".join(str(p) for p in result.outputs), quiet)


def register(app: typer.Typer) -> None:
    app.command("talk", cls=ReportingCommand, no_args_is_help=True)(talk_command)
