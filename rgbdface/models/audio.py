"""Audio encoders (paper §4.2, supp. §7.1): 16 kHz mono waveforms → per-video-frame features.

    encoder.video_features(wave, fps)  → [F, A], F = ceil(duration × fps), features interpolated to the video rate

Waveforms come from `rgbdface.data.audio` (load_audio), and the features are cut into
windows there too (audio_windows).

Two encoders share one interface:
- `MelAudioEncoder`: log-mel spectrogram from `torch.stft`; needs no weights, deterministic.
  It serves the tiny models and the tests; with `normalise=True` the features are relative
  to each utterance's level (gain-independent, silence at a fixed floor).
- `Wav2VecAudioEncoder`: wav2vec 2.0 (`transformers.Wav2Vec2Model`) from a local folder,
  safetensors only; the hidden states of all layers (the input embedding included) are
  concatenated per frame, layer-major: [(L + 1) · H]. `wav2vec_features` computes the same
  features for prep-depth to store for training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from rgbdface.data.audio import SAMPLE_RATE, VIDEO_FPS, num_video_frames, to_video_rate
from rgbdface.utils import InputError

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
    """Log-mel features from torch.stft (Hann window); no weights, the same output everywhere.

    normalise=False: log(P + 1e-6) of the mel power P, in the waveform's own units (what the
    bundled tiny model was trained with). A recording's gain g shifts every feature by log g²,
    and digital silence sits at log(1e-6) = -13.8, far below anything a quiet room gives.

    normalise=True: level-independent features, log(P / ref + 1e-4), per utterance (the whole
    waveform given to `video_features` / `native`):
    - ref is the 95th percentile over the utterance's frames of the per-frame mean mel power:
      the level of its loud vowels. A percentile rather than the maximum, so that a click or a
      plosive burst shorter than 5 % of the utterance does not set the level; a high one, so
      that pauses (often half of a recording) do not.
    - the floor 1e-4 keeps 40 dB below that level: the dynamic range of speech that moves the
      mouth. Room noise, hiss and digital zeros all lie below it and map to the same floor
      (log 1e-4 = -9.2), so no feature is -inf and the kind of silence does not matter.
    Scaling the waveform by g > 0 scales P and ref by g², so the features are unchanged
    (up to float error). An all-zero waveform (ref = 0) gives the floor everywhere.
    """

    kind = "mel"
    REF_QUANTILE = 0.95
    FLOOR = 1e-4  # 40 dB below the reference level

    def __init__(self, n_mels: int = 80, normalise: bool = False):
        self.settings = MelSettings(n_mels=n_mels)
        self.dim = n_mels
        self.normalise = bool(normalise)
        s = self.settings
        self.filters = mel_filterbank(s.n_fft, s.n_mels, SAMPLE_RATE, s.f_min, s.f_max)  # [M, n_fft/2 + 1]

    def native(self, wave: torch.Tensor) -> torch.Tensor:
        s = self.settings
        spec = torch.stft(wave, n_fft=s.n_fft, hop_length=s.hop, window=torch.hann_window(s.n_fft),
                          center=True, pad_mode="reflect" if wave.numel() > s.n_fft // 2 else "constant",
                          return_complex=True)  # [n_fft/2 + 1, T']
        mel = self.filters @ spec.abs().square()  # [M, T']
        if not self.normalise:
            return rearrange(torch.log(mel + 1e-6), "m t -> t m")
        ref = torch.quantile(mel.mean(0), self.REF_QUANTILE)  # the utterance's level
        ratio = mel / ref if ref > 0 else torch.zeros_like(mel)  # all zeros: everything at the floor
        return rearrange(torch.log(ratio + self.FLOOR), "m t -> t m")

    def record(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "normalise": self.normalise}


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
        if self.normalize:  # over the whole waveform (wav2vec2-base-960h's feature extractor does the same)
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
                       device: str | torch.device = "cpu", normalise: bool = False) -> AudioEncoder:
    """Rebuild the encoder a model was trained with ('mel' or 'wav2vec2').

    `normalise` is the mel encoder's level normalisation (a record without it: off, as before);
    wav2vec2 normalises its input itself and ignores it.
    """
    if kind == "mel":
        return MelAudioEncoder(n_mels=dim or 80, normalise=normalise)
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


def wav2vec_features(model_dir: str | Path, audio: np.ndarray, n_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Per-frame wav2vec 2.0 features [n_frames, (layers + 1) * dim] float16 from a local model folder.

    The same encoder as inference (`Wav2VecAudioEncoder`): hidden states of all layers (the
    input embedding included), linearly interpolated to the frame rate and concatenated per
    frame (paper supp. §7.1). What prep-depth stores beside each clip (wav2vec.npy).
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"wav2vec 2.0 expects {SAMPLE_RATE} Hz audio, got {sample_rate}")
    encoder = _wav2vec(str(model_dir))
    with torch.inference_mode():
        feats = encoder.native(torch.from_numpy(np.asarray(audio, np.float32)).flatten())  # [T', A]
    return to_video_rate(feats.float().cpu(), n_frames).numpy().astype(np.float16)


_WAV2VEC: dict[str, Wav2VecAudioEncoder] = {}


def _wav2vec(model_dir: str) -> Wav2VecAudioEncoder:
    """One encoder per folder and process (loading is slow)."""
    if model_dir not in _WAV2VEC:
        _WAV2VEC[model_dir] = Wav2VecAudioEncoder(model_dir)
    return _WAV2VEC[model_dir]
