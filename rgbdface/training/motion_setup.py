"""Stage-3 set-up: the motion modules on a stage-1 model, and per-clip audio features for the data stream.

Audio features are per video frame [T_clip, A] (row f = frame f of the clip, as prep-depth
writes clip audio: frame f covers samples [640 f, 640 (f + 1)) at 16 kHz and 25 fps). They
come from the dataset's precomputed wav2vec features when present and the encoder is
wav2vec2, else from the clip's WAV through the model's audio encoder (mel or wav2vec2).
Features are computed once per clip and cached in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rgbdface.training.config import RunConfig
from rgbdface.utils import InputError


def check_audio_source(samples: list, cfg: RunConfig) -> None:
    """wav2vec2 needs either a local model folder or precomputed features for every clip."""
    mo = cfg.motion
    if mo.audio_encoder != "wav2vec2" or mo.audio_model_dir:
        if mo.audio_model_dir and not Path(mo.audio_model_dir).is_dir():
            raise InputError(f"motion.audio_model_dir {mo.audio_model_dir}: no such folder; pass a local wav2vec 2.0 folder")
        return
    lacking = sorted({s.clip for s in samples if s.audio is not None and s.audio_features is None})
    if lacking:
        raise InputError(f"motion.audio_encoder=wav2vec2: clip {lacking[0]!r} has no precomputed features; "
                         "pass --set motion.audio_model_dir=DIR (a local wav2vec 2.0 folder) or run prep-depth with --wav2vec")


def audio_fields(cfg: RunConfig):
    """Which audio file of a sample the run reads (see `clip_audio_features`): sample → field names."""
    wav2vec = cfg.motion.audio_encoder == "wav2vec2"
    return lambda s: ("audio_features",) if wav2vec and s.audio_features is not None else ("audio",)


def _feature_dim(samples: list, cfg: RunConfig) -> int:
    mo = cfg.motion
    if mo.audio_encoder == "mel":
        return 80
    if mo.audio_model_dir:
        cfg_path = Path(mo.audio_model_dir) / "config.json"
        import json

        c = json.loads(cfg_path.read_text())
        return (int(c["num_hidden_layers"]) + 1) * int(c["hidden_size"])
    first = next((s.audio_features for s in samples if s.audio_features is not None), None)
    if first is None:
        raise InputError("motion.audio_encoder=wav2vec2 needs motion.audio_model_dir=DIR or precomputed features in the dataset")
    return int(np.load(first, mmap_mode="r").shape[-1])


def add_motion(model, cfg: RunConfig, samples: list | None = None, audio_dim: int | None = None) -> None:
    """Add audio + temporal modules to a stage-1 model (temporal from AnimateDiff weights if given).

    The audio feature size comes from the encoder (or the dataset's features) unless `audio_dim` is given.
    """
    from rgbdface.models.motion import MotionConfig

    mo = cfg.motion
    settings = dict(frames=mo.frames, motion_frames=mo.motion_frames, audio_window=mo.audio_window,
                    audio_encoder=mo.audio_encoder, audio_dim=audio_dim or _feature_dim(samples or [], cfg),
                    audio_folder=mo.audio_model_dir, audio_normalise=mo.audio_normalise and mo.audio_encoder == "mel",
                    fps=int(round(mo.fps)),
                    temporal_max_frames=max(32, mo.frames + mo.motion_frames))
    small = model.meta.image_size < 256
    config = MotionConfig.tiny(**settings) if small else MotionConfig(**settings)
    adapter = mo.motion_adapter_dir or None
    if adapter is not None and not Path(adapter).is_dir():
        raise InputError(f"motion.motion_adapter_dir {adapter}: no such folder; pass a local AnimateDiff motion-adapter folder")
    model.add_motion(config, motion_adapter_dir=adapter)


def clip_audio_features(model, cfg: RunConfig):
    """A function sample → the per-frame audio features [T_clip, A] of its clip (float32, cached)."""
    from rgbdface.data.audio import load_audio

    motion = model.motion
    want = int(motion.config.audio_dim)
    encoder = None
    cache: dict[str, torch.Tensor] = {}

    def features(sample) -> torch.Tensor:
        nonlocal encoder
        key = str(sample.audio_features or sample.audio)
        if key in cache:
            return cache[key]
        if motion.config.audio_encoder == "wav2vec2" and sample.audio_features is not None:
            feats = torch.from_numpy(np.load(sample.audio_features).astype(np.float32))
        else:
            if sample.audio is None:
                raise InputError(f"clip {sample.clip}: no audio file; re-run prep-depth on the video")
            if encoder is None:
                encoder = motion.audio_encoder(cfg.motion.audio_model_dir or None)
            feats = encoder.video_features(load_audio(sample.audio), fps=int(round(cfg.motion.fps)))
        if feats.shape[-1] != want:
            raise InputError(f"clip {sample.clip}: audio features have {feats.shape[-1]} dims, the model's audio projection takes {want}")
        cache[key] = feats
        return feats

    return features
