"""Audio in (paper §4.2, supp. §7.1): 16 kHz mono waveforms → per-video-frame features → windows.

    load_audio(path)                   any file ffmpeg reads → float32 [T] at 16 kHz, mono
    encoder.video_features(wave, fps)  → [F, A], F = ceil(duration × fps), features interpolated to the video rate
    audio_windows(features, k)         → [F, k, A], frames f-2..f+2 for k = 5 (clamped at the ends)

Two encoders share one interface:
- `MelAudioEncoder`: log-mel spectrogram from `torch.stft`; needs no weights, deterministic.
  It serves the tiny models and the tests.
- `Wav2VecAudioEncoder`: wav2vec 2.0 (`transformers.Wav2Vec2Model`) from a local folder,
  safetensors only; the hidden states of all layers (the input embedding included) are
  concatenated per frame, layer-major: [(L + 1) · H]. The same features, computed the same
  way, as `rgbdface.data.video.wav2vec_features` stores for training (prep-depth).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from rgbdface.utils import InputError

SAMPLE_RATE = 16000
VIDEO_FPS = 25
SILENCE_PEAK = 1e-4  # a waveform whose peak stays below this is silent (-80 dBFS)


# --------------------------------------------------------------------------------- loading
def load_audio(path: str | Path, max_seconds: float | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio track of any file ffmpeg reads, as float32 mono [T] at `sample_rate`.

    Raises InputError (one line) when the file is missing or unreadable, has no audio,
    is empty, or is silent.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an audio file")
    from rgbdface.data.video import decode_audio

    wave = decode_audio(path, sample_rate, max_seconds)
    if wave.size == 0:
        raise InputError(f"{path}: no audio samples (empty file or no audio track); pass a file with speech")
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        raise InputError(f"{path}: the audio is silent; pass a file with speech")
    return wave


def num_video_frames(num_samples: int, fps: int = VIDEO_FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """ceil(duration × fps): the video covers the whole audio and ends with it."""
    return max(1, math.ceil(num_samples * fps / sample_rate - 1e-9))


def audio_windows(features: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Per-frame features [F, A] → windows [F, k, A] of frames f - k//2 .. f + k//2, clamped at the ends."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k must be odd and >= 1, got {k}")
    n = features.shape[0]
    offsets = torch.arange(k, device=features.device) - k // 2  # [k]
    index = (torch.arange(n, device=features.device)[:, None] + offsets[None]).clamp(0, n - 1)  # [F, k]
    return features[index]  # [F, k, A]


def to_video_rate(native: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Encoder-rate features [T, A] → [F, A] by linear interpolation over time."""
    x = rearrange(native, "t a -> 1 a t")
    x = F.interpolate(x, size=num_frames, mode="linear", align_corners=False)
    return rearrange(x, "1 a f -> f a")


# --------------------------------------------------------------------------------- encoders
class AudioEncoder:
    """Waveform → per-video-frame features. Subclasses set `kind`, `dim` and implement `native`."""

    kind: str = ""
    dim: int = 0

    def native(self, wave: torch.Tensor) -> torch.Tensor:
        """float32 [T] at 16 kHz → features [T', dim] at the encoder's own rate."""
        raise NotImplementedError

    @torch.no_grad()
    def video_features(self, wave: np.ndarray | torch.Tensor, fps: int = VIDEO_FPS) -> torch.Tensor:
        """float32 [T] at 16 kHz → [F, dim] float32 on the CPU, F = ceil(T / 16000 × fps)."""
        wave = torch.as_tensor(np.asarray(wave, np.float32) if not torch.is_tensor(wave) else wave).float().flatten()
        if wave.numel() == 0:
            raise ValueError("empty waveform")
        feats = self.native(wave).float().cpu()  # [T', A]
        return to_video_rate(feats, num_video_frames(wave.numel(), fps))

    def record(self) -> dict:
        """What a model folder stores to rebuild this encoder."""
        return {"kind": self.kind, "dim": self.dim}


@dataclass
class MelSettings:
    n_fft: int = 400  # 25 ms windows
    hop: int = 160  # 10 ms hop (100 frames/s before interpolation)
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1]."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / np.maximum(centre - lower, 1e-8)
    falling = (upper - bins[None]) / np.maximum(upper - centre, 1e-8)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32))


class MelAudioEncoder(AudioEncoder):
    """log(mel power + 1e-6) from torch.stft (Hann window); no weights, the same output everywhere."""

    kind = "mel"

    def __init__(self, n_mels: int = 80):
        self.settings = MelSettings(n_mels=n_mels)
        self.dim = n_mels
        s = self.settings
        self.filters = mel_filterbank(s.n_fft, s.n_mels, SAMPLE_RATE, s.f_min, s.f_max)  # [M, n_fft/2 + 1]

    def native(self, wave: torch.Tensor) -> torch.Tensor:
        s = self.settings
        spec = torch.stft(wave, n_fft=s.n_fft, hop_length=s.hop, window=torch.hann_window(s.n_fft),
                          center=True, pad_mode="reflect" if wave.numel() > s.n_fft // 2 else "constant",
                          return_complex=True)  # [n_fft/2 + 1, T']
        mel = self.filters @ spec.abs().square()  # [M, T']
        return rearrange(torch.log(mel + 1e-6), "m t -> t m")


class Wav2VecAudioEncoder(AudioEncoder):
    """wav2vec 2.0 from a local folder (config.json + *.safetensors); all hidden states concatenated per frame.

    Long audio is encoded in chunks of `chunk_seconds` with `margin_seconds` of context on each
    side (the margins' frames are dropped), so attention memory does not grow with the length.
    """

    kind = "wav2vec2"
    STRIDE = 320  # samples per wav2vec frame (the product of the conv strides): 50 frames/s
    RECEPTIVE = 400  # samples seen by the first frame

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", chunk_seconds: float = 30.0,
                 margin_seconds: float = 1.0):
        from transformers import Wav2Vec2Model

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise InputError(f"--wav2vec {folder}: no config.json; pass a local wav2vec 2.0 folder (e.g. wav2vec2-base-960h)")
        if not any(folder.glob("*.safetensors")):
            raise InputError(f"--wav2vec {folder}: no .safetensors weights; convert the checkpoint to safetensors first")
        self.folder = folder
        self.model = Wav2Vec2Model.from_pretrained(folder, use_safetensors=True, local_files_only=True).to(device).eval()
        cfg = self.model.config
        self.dim = (cfg.num_hidden_layers + 1) * cfg.hidden_size
        self.normalize = True  # wav2vec2-base-960h's feature extractor normalises each input
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            self.normalize = bool(json.loads(pre.read_text()).get("do_normalize", True))
        self.chunk = int(chunk_seconds * SAMPLE_RATE)
        self.margin = int(margin_seconds * SAMPLE_RATE)

    def _encode(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.to(self.model.device)[None]  # [1, T]
        out = self.model(x, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states, 0)[:, 0]  # [L + 1, T', H]
        return rearrange(hidden, "l t h -> t (l h)")

    def native(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.numel() < self.RECEPTIVE:  # shorter than one wav2vec frame: pad with silence
            wave = F.pad(wave, (0, self.RECEPTIVE - wave.numel()))
        if self.normalize:  # over the whole waveform, exactly as data/video.py's training features
            wave = (wave - wave.mean()) / torch.sqrt(wave.var() + 1e-7)
        if wave.numel() <= self.chunk + 2 * self.margin:
            return self._encode(wave)
        parts = []
        for start in range(0, wave.numel(), self.chunk):
            lo, hi = max(0, start - self.margin), min(wave.numel(), start + self.chunk + self.margin)
            feats = self._encode(wave[lo:hi])  # [T', A]
            centres = lo + torch.arange(feats.shape[0]) * self.STRIDE + self.RECEPTIVE // 2  # sample at each frame's centre
            keep = (centres >= start) & (centres < start + self.chunk)
            parts.append(feats[keep.to(feats.device)])
        return torch.cat(parts, 0)

    def record(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "folder": str(self.folder)}


def make_audio_encoder(kind: str, dim: int | None = None, folder: str | Path | None = None,
                       device: str | torch.device = "cpu") -> AudioEncoder:
    """Rebuild the encoder a model was trained with ('mel' or 'wav2vec2')."""
    if kind == "mel":
        return MelAudioEncoder(n_mels=dim or 80)
    if kind == "wav2vec2":
        if folder is None:
            raise InputError("this model was trained with wav2vec 2.0 features; pass its folder with --wav2vec DIR")
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"--wav2vec {folder}: no such folder; pass the wav2vec 2.0 folder the model was trained with (--wav2vec DIR)")
        enc = Wav2VecAudioEncoder(folder, device=device)
        if dim is not None and enc.dim != dim:
            raise InputError(f"--wav2vec {folder}: gives {enc.dim}-dim features but the model expects {dim}; pass the folder it was trained with")
        return enc
    raise ValueError(f"unknown audio encoder kind {kind!r}; expected 'mel' or 'wav2vec2'")
