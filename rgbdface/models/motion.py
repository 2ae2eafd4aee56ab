"""Stage 3: the joint denoiser for clips, with audio and temporal attention (paper §4.2, Fig. 2; supp. §7.1, Fig. 9).

Every building block of the joint denoiser gains two modules; the UNet code is untouched.
This file wires them in, runs a clip and saves/loads the stage-3 weights:

- audio attention on each transformer block's `attn2`: `rgbdface.models.audio_attention`
- temporal attention after every layer, and the motion frames through the ReferenceNet:
  `rgbdface.models.temporal`
- AnimateDiff weights for the temporal modules: `rgbdface.models.motion_adapter`

The ReferenceNet's mutual self-attention (reference.py, on `attn1`) is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from einops import rearrange, repeat
from torch import nn

from rgbdface.models.audio_attention import AudioAttnProcessor, AudioProjection
from rgbdface.models.denoiser import RGBDDenoiser, _batch
from rgbdface.models.temporal import MotionRecordHook, TemporalHook, default_motion_adapter, out_channels, temporal_positions
from rgbdface.utils import InputError, exists

MOTION_DIR = "motion"
MOTION_CONFIG = "motion.json"
MOTION_WEIGHTS = "motion.safetensors"


@dataclass
class MotionConfig:
    """Stage-3 settings; stored with the model in motion/motion.json."""

    frames: int = 14  # F: frames denoised together (one clip)
    motion_frames: int = 4  # n: last generated frames of the previous clip fed to temporal attention
    audio_window: int = 5  # k: audio frames per video frame (±2, clamped at the ends)
    audio_encoder: str = "mel"  # "mel" (offline log-mel) or "wav2vec2" (a local wav2vec 2.0 folder)
    audio_dim: int = 80  # A: per-frame audio feature size (mel bins, or (layers + 1) × hidden for wav2vec2)
    audio_folder: str = ""  # wav2vec2 only: the folder the model was trained with (override with --wav2vec)
    audio_normalise: bool = False  # mel only: features relative to each utterance's level (a record without it: off)
    audio_tokens: int = 32  # T: tokens per video frame after the audio projection
    audio_hidden: int = 512  # width of the audio projection MLP
    temporal_heads: int = 8  # heads of each temporal attention (without AnimateDiff weights)
    temporal_max_frames: int = 32  # length of the temporal positional encoding; >= frames + motion_frames
    fps: int = 25  # video rate

    def __post_init__(self):
        if self.audio_encoder not in ("mel", "wav2vec2"):
            raise ValueError(f"audio_encoder must be 'mel' or 'wav2vec2', got {self.audio_encoder!r}")
        if self.audio_window < 1 or self.audio_window % 2 == 0:
            raise ValueError(f"audio_window must be odd and >= 1, got {self.audio_window}")
        if self.frames < 1 or self.motion_frames < 0:
            raise ValueError(f"need frames >= 1 and motion_frames >= 0, got {self.frames} and {self.motion_frames}")
        if self.frames + self.motion_frames > self.temporal_max_frames:
            raise ValueError(f"frames + motion_frames = {self.frames + self.motion_frames} exceeds temporal_max_frames {self.temporal_max_frames}")

    @classmethod
    def tiny(cls, **overrides) -> "MotionConfig":
        """Small audio projection for the tiny model (mel features)."""
        return cls(**({"audio_tokens": 4, "audio_hidden": 64, "temporal_heads": 4} | overrides))

    @classmethod
    def from_dict(cls, d: dict) -> "MotionConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class MotionState:
    """What the hooks and processors read during one denoiser call (set by MotionDenoiser)."""

    frames: int | None = None  # F while a clip is denoised; None = plain per-image calls (stage-1 behaviour)
    audio_tokens: torch.Tensor | None = None  # [(B F), T, D]
    motion: dict[str, torch.Tensor] = field(default_factory=dict)  # position → [(B n), c, h, w] ReferenceNet features
    motion_frames: int = 0  # n of the stored motion features
    recording: bool = False  # the ReferenceNet's hooks store features while True
    checkpoint: bool = False  # temporal modules recompute their activations in backward (gradient checkpointing)


# ------------------------------------------------------------------------------------ the denoiser
class MotionDenoiser(nn.Module):
    """ε_θ for a clip: the joint denoiser with audio attention, temporal attention and motion frames.

    Trainable: `audio_proj`, `audio_attn`, `temporal` (see `trainable_parameters`); the joint
    denoiser and its ReferenceNet stay as stage 1 left them.
    """

    def __init__(self, joint: RGBDDenoiser, config: MotionConfig, adapter=None):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        self.joint = joint
        self.config = config
        self.state = MotionState()
        unet = joint.unet
        width = int(unet.config.cross_attention_dim)
        self.audio_proj = AudioProjection(config.audio_window, config.audio_dim, config.audio_tokens, width, config.audio_hidden)

        # Audio cross-attention, one per transformer block, shaped like the block's attn2.
        self.audio_attn = nn.ModuleDict()
        for name in unet.attn_processors:
            if name.endswith("attn2.processor"):
                attn2 = unet.get_submodule(name.removesuffix(".processor"))
                a = Attention(query_dim=attn2.query_dim, cross_attention_dim=width, heads=attn2.heads,
                              dim_head=attn2.inner_dim // attn2.heads, out_bias=True)
                nn.init.zeros_(a.to_out[0].weight)  # zero output: stage 1 unchanged at start
                nn.init.zeros_(a.to_out[0].bias)
                self.audio_attn[_key(name)] = a

        self.temporal = adapter if exists(adapter) else default_motion_adapter(unet, config)
        self._check_adapter()
        self._handles: list = []
        self._saved_processors: dict = {}
        self.install()

    # ---------------------------------------------------------------------------- wiring
    def _check_adapter(self) -> None:
        max_len = int(self.temporal.config.motion_max_seq_length)
        if self.config.frames + self.config.motion_frames > max_len:
            raise InputError(f"temporal modules encode at most {max_len} frames; frames + motion_frames = "
                             f"{self.config.frames + self.config.motion_frames}")
        for unet_path, layer, adapter_path in temporal_positions(self.joint.unet):
            try:
                module = self.temporal.get_submodule(adapter_path)
            except (AttributeError, IndexError):
                raise InputError(f"the motion adapter has no module {adapter_path}; it does not fit this UNet's layout") from None
            if module.in_channels != out_channels(layer):
                raise InputError(f"motion adapter {adapter_path} has {module.in_channels} channels, the UNet's "
                                 f"{unet_path} gives {out_channels(layer)}; use an adapter made for this base model")

    def install(self) -> None:
        """Put the audio processors on the denoiser's attn2 and the hooks on denoiser and ReferenceNet."""
        if self._handles:
            return
        unet, ref = self.joint.unet, self.joint.reference_unet
        procs = unet.attn_processors
        self._saved_processors = {n: p for n, p in procs.items() if n.endswith("attn2.processor")}
        unet.set_attn_processor({n: (AudioAttnProcessor(self.state, self.audio_attn[_key(n)], p) if n in self._saved_processors else p)
                                 for n, p in procs.items()})
        for unet_path, layer, adapter_path in temporal_positions(unet):
            hook = TemporalHook(self.state, unet_path, self.temporal.get_submodule(adapter_path))
            self._handles.append(layer.register_forward_hook(hook))
        for ref_path, layer, _ in temporal_positions(ref):
            self._handles.append(layer.register_forward_hook(MotionRecordHook(self.state, ref_path)))

    def uninstall(self) -> None:
        """Remove every hook and restore the denoiser's attn2 processors (the stage-1 model, untouched)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._saved_processors:
            procs = self.joint.unet.attn_processors
            self.joint.unet.set_attn_processor({n: self._saved_processors.get(n, p) for n, p in procs.items()})
            self._saved_processors = {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Stage 3 trains only these: audio projection, audio attention, temporal modules."""
        return [*self.audio_proj.parameters(), *self.audio_attn.parameters(), *self.temporal.parameters()]

    def motion_state_dict(self) -> dict[str, torch.Tensor]:
        """The stage-3 weights only (what motion/motion.safetensors holds)."""
        return {f"{part}.{k}": v for part in ("audio_proj", "audio_attn", "temporal")
                for k, v in getattr(self, part).state_dict().items()}

    # ---------------------------------------------------------------------------- conditioning
    def set_reference(self, reference: torch.Tensor, context: torch.Tensor) -> None:
        """ReferenceNet once on reference latents [B, C, h, w]; reused until the next call."""
        self.joint.set_reference(reference, context)

    def set_motion(self, motion: torch.Tensor, context: torch.Tensor) -> None:
        """ReferenceNet once on the motion frames' RGB latents [B, n, C, h, w]; features kept per temporal module."""
        b, n = motion.shape[:2]
        self.state.motion.clear()
        self.state.motion_frames = n
        if n == 0:
            return
        x = rearrange(motion, "b n c h w -> (b n) c h w")
        t0 = torch.zeros(x.shape[0], device=x.device, dtype=torch.long)
        self.state.recording = True
        try:
            self.joint.reference_unet(x, t0, encoder_hidden_states=_batch(context, x.shape[0]))
        finally:
            self.state.recording = False

    def clear(self) -> None:
        """Drop the cached reference and motion features."""
        self.joint.clear_reference()
        self.state.motion.clear()
        self.state.motion_frames = 0

    def _keep_per_frame(self, keep: torch.Tensor | None, f: int) -> torch.Tensor | None:
        """[B] → [(B F)], the same tensor for the same `keep` (so the bank moves it to the device once, not per step)."""
        if not exists(keep):
            return None
        memo = getattr(self, "_keep_memo", None)
        if memo is None or memo[0] is not keep or memo[1] != f:
            self._keep_memo = memo = (keep, f, repeat(keep, "b -> (b f)", f=f))
        return memo[2]

    def forward(
        self,
        sample: torch.Tensor,  # [B, F, 2C, h, w] noisy joint latents
        timestep: torch.Tensor,  # [B]
        context: torch.Tensor,  # [1, L, D]
        audio: torch.Tensor,  # [B, F, k, A] audio windows
        reference: torch.Tensor | None,  # [B, C, h, w] reference RGB latent; None = reuse set_reference's
        motion: torch.Tensor | None,  # [B, n, C, h, w] RGB latents of the motion frames; None = reuse set_motion's
        keep: torch.Tensor | None = None,  # [B] bool reference dropout
    ) -> torch.Tensor:  # [B, F, 2C, h, w] predicted noise
        b, f = sample.shape[:2]
        if audio.shape[:2] != (b, f):
            raise ValueError(f"audio windows {tuple(audio.shape)} do not match sample {tuple(sample.shape)} in [B, F]")

        # 1. Reference and motion-frame features (ReferenceNet, timestep 0)
        if exists(reference):
            self.set_reference(reference, context)
        if exists(motion):
            self.set_motion(motion, context)

        # 2. Audio tokens per frame (audio projection)
        tokens = self.audio_proj(rearrange(audio, "b f k a -> (b f) k a").to(sample.dtype))  # [(B F), T, D]

        # 3. All frames through the joint denoiser as one batch; temporal modules regroup them
        x = rearrange(sample, "b f c h w -> (b f) c h w")
        t = timestep.reshape(-1).expand(b) if timestep.numel() == 1 else timestep
        t = repeat(t, "b -> (b f)", f=f)
        keep_frames = self._keep_per_frame(keep, f)
        self.state.frames, self.state.audio_tokens = f, tokens
        try:
            eps = self.joint(x, t, context, keep=keep_frames)  # [(B F), 2C, h, w]
        finally:
            self.state.frames, self.state.audio_tokens = None, None
        return rearrange(eps, "(b f) c h w -> b f c h w", b=b)

    # ---------------------------------------------------------------------------- audio features
    def audio_encoder(self, folder: str | Path | None = None, device="cpu"):
        """The encoder this model was trained with; `folder` overrides the recorded wav2vec2 folder."""
        from rgbdface.models.audio import make_audio_encoder

        folder = folder or self.config.audio_folder or None
        return make_audio_encoder(self.config.audio_encoder, self.config.audio_dim, folder, device=device,
                                  normalise=self.config.audio_normalise)

    # ---------------------------------------------------------------------------- save / load
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        record = {"config": asdict(self.config), "temporal": {k: _jsonable(v) for k, v in dict(self.temporal.config).items()
                                                              if not k.startswith("_")}}
        (folder / MOTION_CONFIG).write_text(json.dumps(record, indent=2))
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.motion_state_dict().items()}
        save_file(state, str(folder / MOTION_WEIGHTS))

    @classmethod
    def load(cls, joint: RGBDDenoiser, folder: Path) -> "MotionDenoiser":
        from diffusers import MotionAdapter
        from safetensors.torch import load_file

        record = json.loads((folder / MOTION_CONFIG).read_text())
        config = MotionConfig.from_dict(record["config"])
        adapter = MotionAdapter.from_config(record["temporal"])
        den = cls(joint, config, adapter=adapter)
        state = load_file(str(folder / MOTION_WEIGHTS))
        for part in ("audio_proj", "audio_attn", "temporal"):
            sub = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
            getattr(den, part).load_state_dict(sub, strict=True)
        return den


def _key(processor_name: str) -> str:
    """A ModuleDict key for an attn2 processor path (no dots allowed)."""
    return processor_name.removesuffix(".processor").replace(".", "_")


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v
