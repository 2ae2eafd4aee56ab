"""Audio-driven RGB + depth video of a portrait (paper §4.2, §5.5, Fig. 2; supp. §7.1).

Clip by clip: 14 frames are denoised together (temporal attention over the frame axis,
audio attention per frame); the last 4 generated frames' RGB latents become the motion
frames of the next clip (through the ReferenceNet); the first clip uses the reference
repeated. The reference goes through the ReferenceNet once for the whole video. The
video has ceil(duration × 25) frames and ends with the audio.

`talk_frames` yields frames as each clip is decoded; `talk` writes them straight to the
outputs (`rgbdface.data.video_outputs`), so memory stays flat however long the audio is.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from einops import repeat

from rgbdface.data.audio import SAMPLE_RATE, audio_windows, num_video_frames
from rgbdface.models.model import RGBDFaceModel
from rgbdface.pipelines.common import image_to_tensor, tensor_to_images
from rgbdface.pipelines.memory import batch_size_for
from rgbdface.pipelines.sampling import guided
from rgbdface.utils import InputError, exists


@dataclass
class TalkFrame:
    """One video frame.

    index: 0-based frame number (time = index / 25 s)
    rgb:   uint8 [S, S, 3]
    depth: float32 [S, S], relative depth in [-1, 1], larger = farther
    valid: bool [S, S], where the decoded depth is not background
    """

    index: int
    rgb: np.ndarray
    depth: np.ndarray
    valid: np.ndarray


@dataclass
class ClipProgress:
    """Reported after each clip: clip i of n done, frames written so far, seconds elapsed and still to go."""

    clip: int
    clips: int
    frames_done: int
    frames: int
    elapsed: float
    eta: float


@dataclass
class TalkResult:
    frames: int  # video frames written
    seconds: float  # audio duration covered
    clips: int
    elapsed: float  # seconds of generation
    outputs: list[Path]


NOISE_MODES = ("video", "frame")


def check_inputs(reference: np.ndarray, wave: np.ndarray, steps: int, guidance: float, noise: str = "video", strength: float = 1.0) -> None:
    if not isinstance(reference, np.ndarray) or reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[2] != 3:
        raise ValueError("reference must be a uint8 RGB array [H, W, 3]")
    if not isinstance(wave, np.ndarray) or wave.ndim != 1 or wave.size == 0:
        raise ValueError("wave must be a non-empty float32 waveform [T] at 16 kHz")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = off), got {guidance}")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    if not 0 < strength <= 1 or round(strength * steps) < 1:
        raise ValueError(f"strength must be in (0, 1] and leave at least one of the {steps} steps, got {strength}")


def talk_guidance(model: RGBDFaceModel, guidance: float | None) -> float:
    """The guidance asked for, else the model's own choice (`meta.talk_guidance`), else 1 (off)."""
    if guidance is not None:
        return float(guidance)
    return float(model.meta.talk_guidance or 1.0)


@torch.no_grad()
def denoise_clip(
    model: RGBDFaceModel,
    windows: torch.Tensor,  # [1, F, k, A] audio windows of the clip
    motion: torch.Tensor,  # [1, n, C, h, w] RGB latents of the motion frames
    noise: torch.Tensor,  # [1, F, 2C, h, w] initial noise
    steps: int = 25,
    guidance: float = 1.0,
    scheduler: str = "ddim",
    start: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Denoise one clip; the reference must already be set (`model.motion.set_reference`). → [1, F, 2C, h, w].

    strength < 1: the clip starts from `start` ([1, 1 or F, 2C, h, w] latents) noised to the level of the
    last `round(strength × steps)` of the steps, and takes only those (1 = from pure noise)."""
    den = model.motion
    context = model.context.to(noise.dtype)
    sched = model.sampling_scheduler(scheduler)  # fresh per clip: multistep schedulers keep state

    # 1. Motion-frame features, once per clip (ReferenceNet)
    den.set_motion(motion, context)

    # 2. Denoising loop (joint denoiser + audio and temporal attention); CFG on the reference
    sched.set_timesteps(steps, device=noise.device)
    timesteps = sched.timesteps
    if strength < 1:
        timesteps = timesteps[steps - round(strength * steps):]
        latents = sched.add_noise(start.expand_as(noise), noise, timesteps[:1])
    else:
        latents = noise * sched.init_noise_sigma
    keep = torch.tensor([False, True]) if guidance != 1.0 else None  # on the CPU: the bank moves it once
    for t in timesteps:
        x = sched.scale_model_input(latents, t)
        audio = windows
        if exists(keep):  # [unconditional | conditional]: same audio and motion, reference dropped in the first
            x, audio = torch.cat([x, x]), torch.cat([windows, windows])
        eps = den(x, t.reshape(1).expand(x.shape[0]).to(noise.device), context, audio, None, None, keep=keep)
        if exists(keep):
            eps = guided(eps, guidance)
        latents = sched.step(eps, t, latents).prev_sample
    return latents


@torch.no_grad()
def talk_frames(
    model: RGBDFaceModel,
    reference: np.ndarray,
    wave: np.ndarray,
    steps: int = 25,
    guidance: float | None = None,
    scheduler: str = "ddim",
    seed: int = 0,
    audio_encoder=None,
    on_clip: Callable[[ClipProgress], None] | None = None,
    noise: str = "video",
    decode_batch: int | None = None,
    strength: float = 1.0,
) -> Iterator[TalkFrame]:
    """Frames of the person in `reference` (a face crop, uint8 RGB, framed with `model.meta.crop_margin`)
    speaking `wave` (float32 [T], 16 kHz mono).

    Yields ceil(duration × fps) frames in order, one clip at a time. `guidance`: classifier-free guidance
    on the reference (1 = off; twice the denoiser passes otherwise); None: the model's own choice
    (`meta.talk_guidance`; the bundled model: 2), else 1. `audio_encoder`
    defaults to the one the model was trained with (the mel encoder needs no folder).
    `noise`: "video" starts every frame from one initial noise, so that frames differ only by
    what the audio, the motion frames and temporal attention make of them (no frame-to-frame
    flicker from the noise), as stage 3 trains with `motion.noise=video`; "frame" draws fresh noise
    for every frame, as stage 3 trains by default.
    `strength` < 1 starts every clip not from pure noise but from the reference's own RGB latent and the
    latent of its estimated depth (stage 2, the model's default steps), noised to the level of step
    `round((1 - strength) × steps)`, and takes the remaining steps (as image-to-image sampling does); 1 =
    from pure noise, as the paper samples.
    `decode_batch`: frames the VAE decodes at once (None: as many as the free memory takes).
    Memory does not grow with the audio's length but for its per-frame features on the host
    ([N, A]; 0.5 MB per minute for mel, 60 MB for wav2vec2-base): windows, latents and frames
    exist for one clip at a time.
    """
    # 1. Check inputs
    guidance = talk_guidance(model, guidance)
    check_inputs(reference, wave, steps, guidance, noise, strength)
    model.require_stage(3, "talk")
    if strength < 1:
        model.require_stage(2, "talk --strength below 1 (the reference's depth)")
    den, cfg = model.motion, model.motion.config
    device, dtype = model.device, model.dtype
    generator = torch.Generator().manual_seed(seed)
    encoder = audio_encoder if exists(audio_encoder) else den.audio_encoder(device=device)
    one_noise = None

    # 2. Audio features at the video rate (audio encoder), on the host; windows are cut per clip
    feats = encoder.video_features(wave, fps=cfg.fps)  # [N, A]
    if feats.shape[1] != cfg.audio_dim:
        raise InputError(f"the audio encoder gives {feats.shape[1]}-dim features but the model expects {cfg.audio_dim}")
    total = num_video_frames(wave.size, cfg.fps)
    if not decode_batch:
        decode_batch = batch_size_for("vae_decode", device, model.meta.image_size, dtype, cap=cfg.frames)
    clips = math.ceil(total / cfg.frames)
    c = model.meta.latent_channels

    start_time = time.perf_counter()
    try:
        with model.autocast():
            # 3. Encode the reference (VAE) and run the ReferenceNet on it once for the whole video
            ref = image_to_tensor(reference, model.meta.image_size, device).to(dtype)  # [1, 3, S, S]
            z_ref = model.codec.encode_rgb(ref)  # [1, C, s, s]
            # before the ReferenceNet runs for the video: estimating depth sets and clears the shared reference bank
            start = reference_start(model, ref, z_ref) if strength < 1 else None  # [1, 1, 2C, s, s]
            den.set_reference(z_ref, model.context.to(dtype))
            motion = repeat(z_ref, "b c h w -> b n c h w", n=cfg.motion_frames)  # [1, n, C, s, s]: first clip

            for clip in range(clips):
                # 4. One clip: its audio windows (clamped past the end), fresh noise, denoise
                first = clip * cfg.frames
                index = torch.arange(first, first + cfg.frames).clamp(max=total - 1)
                clip_windows = audio_windows(feats, cfg.audio_window, index)[None].to(device, dtype)  # [1, F, k, A]
                if noise == "video":  # one noise for every frame of every clip
                    if one_noise is None:
                        one_noise = torch.randn((1, 1, 2 * c, *z_ref.shape[-2:]), generator=generator).to(device, dtype)
                    clip_noise = one_noise.expand(1, cfg.frames, -1, -1, -1)
                else:
                    clip_noise = torch.randn((1, cfg.frames, 2 * c, *z_ref.shape[-2:]), generator=generator).to(device, dtype)
                latents = denoise_clip(model, clip_windows, motion, clip_noise, steps, guidance, scheduler, start, strength)  # [1, F, 2C, s, s]
                motion = latents[:, cfg.frames - cfg.motion_frames:, :c]  # [1, n, C, s, s]: last generated frames

                # 5. Decode (VAE), `decode_batch` frames at a time, and hand them out
                count = min(cfg.frames, total - first)
                z = latents[0, :count]  # [F', 2C, s, s]: frames past the audio's end are not decoded
                del latents
                for lo in range(0, count, decode_batch):
                    zs = z[lo:lo + decode_batch]
                    rgb = tensor_to_images(model.codec.decode_rgb(zs[:, :c]))  # [b, S, S, 3]
                    depth = model.codec.decode_depth(zs[:, c:])[:, 0].float()  # [b, S, S]
                    valid = (depth < model.meta.depth.valid_threshold).cpu().numpy()
                    depth = depth.cpu().numpy()
                    for i in range(len(zs)):
                        yield TalkFrame(first + lo + i, rgb[i], depth[i], valid[i])
                    del rgb, depth, valid
                del z
                if exists(on_clip):
                    elapsed = time.perf_counter() - start_time
                    done = first + count
                    on_clip(ClipProgress(clip + 1, clips, done, total, elapsed, elapsed / done * (total - done)))
    finally:
        den.clear()


def reference_start(model: RGBDFaceModel, ref: torch.Tensor, z_ref: torch.Tensor) -> torch.Tensor:
    """The latents a clip starts from at strength < 1: the reference's RGB latent `z_ref` [1, C, s, s] and the
    latent of its depth as stage 2 estimates it over the whole crop (`ref` [1, 3, S, S] at the model's size).
    → [1, 1, 2C, s, s]."""
    from rgbdface.pipelines.depth import estimate_depth_crop

    crop = tensor_to_images(ref)[0]  # [S, S, 3]
    depth = torch.from_numpy(estimate_depth_crop(model, crop))[None, None].to(z_ref.device, z_ref.dtype)  # [1, 1, S, S]
    z_depth = model.codec.encode_depth(depth, normalized=True)
    return torch.cat([z_ref, z_depth.to(z_ref.dtype)], 1)[:, None]


def talk(
    model: RGBDFaceModel,
    reference: np.ndarray,
    audio_path: str | Path,
    wave: np.ndarray,
    output: str | Path,
    depth_video: str | Path | None = None,
    side_by_side: bool = False,
    rgb_frames: str | Path | None = None,
    depth_frames: str | Path | None = None,
    mesh_frames: str | Path | None = None,
    steps: int = 25,
    guidance: float | None = None,
    scheduler: str = "ddim",
    seed: int = 0,
    audio_encoder=None,
    on_clip: Callable[[ClipProgress], None] | None = None,
    noise: str = "video",
    strength: float = 1.0,
) -> TalkResult:
    """Generate the talking RGB + depth video and write every requested output as frames are made.

    `wave` is the waveform of `audio_path` (load_audio, possibly cut to --max-seconds); the
    file is muxed into the videos for the same duration. Outputs appear only when complete
    (`rgbdface.data.video_outputs.VideoOutputs` says what each holds).
    """
    from rgbdface.data.video_outputs import VideoOutputs

    guidance = talk_guidance(model, guidance)
    check_inputs(reference, wave, steps, guidance, noise, strength)
    model.require_stage(3, "talk")
    fps = model.motion.config.fps if exists(model.motion) else 25
    seconds = wave.size / SAMPLE_RATE
    outputs = VideoOutputs(output, fps, audio_path, seconds, depth_video=depth_video, side_by_side=side_by_side,
                           rgb_frames=rgb_frames, depth_frames=depth_frames, mesh_frames=mesh_frames)  # checks every path
    t0 = time.perf_counter()
    with outputs:
        for frame in talk_frames(model, reference, wave, steps, guidance, scheduler, seed, audio_encoder, on_clip, noise, strength=strength):
            outputs.write(frame)
    clips = math.ceil(outputs.frames / model.motion.config.frames)
    return TalkResult(outputs.frames, seconds, clips, time.perf_counter() - t0, outputs.paths)
