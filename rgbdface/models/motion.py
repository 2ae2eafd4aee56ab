"""Stage 3: audio and temporal attention around the joint denoiser (paper §4.2, Fig. 2; supp. §7.1, Fig. 9).

Every building block of the joint denoiser gains two modules; the UNet code is untouched.

- Audio attention. Each transformer block's cross-attention (`attn2`) gets an
  `AudioAttnProcessor`: it computes the block's usual cross-attention over the cached
  context and adds a cross-attention of the same normalised hidden states over the frame's
  audio tokens (a decoupled cross-attention, as IP-Adapter adds image tokens). The added
  attention's output projection is zero-initialised, so at the start of stage 3 the joint
  denoiser computes exactly what it did after stage 1.
- Temporal attention. AnimateDiff motion modules (diffusers' `MotionAdapter`, so its
  weights load by name) sit where `UNetMotionModel` puts them: after each layer
  (resnet, + transformer in cross-attention blocks) of every down, mid and up block.
  They are forward hooks on those UNet modules and attend over the frame axis.
  Without AnimateDiff weights their `proj_out` is zero-initialised: identity at start.
- Motion frames. The last n generated frames of the previous clip go through the
  ReferenceNet (timestep 0); forward hooks on the ReferenceNet's modules at the same
  positions record their features, and each temporal module attends over
  [n motion frames | F clip frames], keeping only the clip's F frames after it.

The ReferenceNet's mutual self-attention (reference.py, on `attn1`) is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from einops import rearrange, repeat
from torch import nn

from rgbdface.models.denoiser import RGBDDenoiser, _batch
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


# ------------------------------------------------------------------------------------ audio
class AudioProjection(nn.Module):
    """Audio windows [N, k, A] → tokens [N, T, D]: an MLP over the flattened window, then LayerNorm."""

    def __init__(self, window: int, dim: int, tokens: int, out_dim: int, hidden: int):
        super().__init__()
        self.tokens = tokens
        self.net = nn.Sequential(
            nn.Linear(window * dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, tokens * out_dim),
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        x = self.net(rearrange(windows, "n k a -> n (k a)"))  # [N, T·D]
        return self.norm(rearrange(x, "n (t d) -> n t d", t=self.tokens))  # [N, T, D]


class AudioAttnProcessor:
    """`attn2` of a denoiser transformer block: its own cross-attention + attention over the audio tokens.

    `inner` is the processor that was there (the block's usual cross-attention); `audio` is
    a separate `Attention` owned by the MotionDenoiser, its output projection zero at start.
    Without audio tokens in the state the block behaves exactly as before.
    """

    def __init__(self, state: MotionState, audio: nn.Module, inner):
        self.state, self.audio, self.inner = state, audio, inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)  # [B, N, C]
        tokens = self.state.audio_tokens
        if tokens is None:
            return out
        b = hidden_states.shape[0]
        if b != tokens.shape[0]:  # CFG halves share one set of audio tokens
            tokens = tokens.repeat(b // tokens.shape[0], 1, 1)
        return out + self.audio(hidden_states, encoder_hidden_states=tokens.to(hidden_states.dtype))


# ------------------------------------------------------------------------------------ temporal
def temporal_positions(unet) -> list[tuple[str, nn.Module, str]]:
    """(UNet module path, module, adapter path) for every temporal module, in `UNetMotionModel`'s layout.

    After layer j of a block: its transformer in cross-attention blocks, else its resnet.
    """
    out = []

    def add(prefix, block, adapter_prefix):
        layers = block.attentions if hasattr(block, "attentions") and block.attentions is not None else block.resnets
        kind = "attentions" if layers is not getattr(block, "resnets", None) else "resnets"
        for j, m in enumerate(layers):
            out.append((f"{prefix}.{kind}.{j}", m, f"{adapter_prefix}.motion_modules.{j}"))

    for i, block in enumerate(unet.down_blocks):
        add(f"down_blocks.{i}", block, f"down_blocks.{i}")
    if unet.mid_block is not None and getattr(unet.mid_block, "attentions", None):
        out.append(("mid_block.attentions.0", unet.mid_block.attentions[0], "mid_block.motion_modules.0"))
    for i, block in enumerate(unet.up_blocks):
        add(f"up_blocks.{i}", block, f"up_blocks.{i}")
    return out


def default_motion_adapter(unet, config: MotionConfig):
    """An AnimateDiff `MotionAdapter` laid out for `unet`, proj_out zero (identity at start)."""
    from diffusers import MotionAdapter

    c = unet.config
    adapter = MotionAdapter(
        block_out_channels=tuple(c.block_out_channels),
        motion_layers_per_block=c.layers_per_block,
        motion_transformer_layers_per_block=1,
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=config.temporal_heads,
        motion_norm_num_groups=c.norm_num_groups,
        motion_max_seq_length=config.temporal_max_frames,
        use_motion_mid_block=True,
    )
    zero_temporal_outputs(adapter)
    return adapter


@torch.no_grad()
def zero_temporal_outputs(adapter) -> None:
    """Zero every motion module's proj_out: the residual temporal attention then returns its input."""
    for m in adapter.modules():
        if type(m).__name__ == "AnimateDiffTransformer3D":
            m.proj_out.weight.zero_()
            m.proj_out.bias.zero_()


def _module_at(root: nn.Module, path: str) -> nn.Module:
    m = root
    for part in path.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


def _out_channels(m: nn.Module) -> int:
    return int(m.out_channels) if hasattr(m, "out_channels") and m.out_channels else int(m.in_channels)


class TemporalHook:
    """Forward hook after a denoiser layer: temporal self-attention over [motion frames | clip frames]."""

    def __init__(self, state: MotionState, name: str, module: nn.Module):
        self.state, self.name, self.module = state, name, module

    def __call__(self, layer, args, output):
        st = self.state
        if st.frames is None:
            return output
        x = output[0] if isinstance(output, tuple) else output  # [(B F), c, h, w]
        f = st.frames
        x = rearrange(x, "(b f) c h w -> b f c h w", f=f)
        n = 0
        motion = st.motion.get(self.name)
        if exists(motion):
            m = rearrange(motion, "(b n) c h w -> b n c h w", n=st.motion_frames).to(x.dtype)
            if m.shape[0] != x.shape[0]:  # CFG halves share the motion frames
                m = m.repeat(x.shape[0] // m.shape[0], 1, 1, 1, 1)
            x = torch.cat([m, x], dim=1)  # [B, n + F, c, h, w]
            n = m.shape[1]
        y = self.module(rearrange(x, "b f c h w -> (b f) c h w"), num_frames=n + f)
        y = rearrange(y, "(b f) c h w -> b f c h w", f=n + f)[:, n:]  # drop the motion frames
        y = rearrange(y, "b f c h w -> (b f) c h w")
        return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y


class MotionRecordHook:
    """Forward hook on a ReferenceNet layer: store its output for the matching temporal module."""

    def __init__(self, state: MotionState, name: str):
        self.state, self.name = state, name

    def __call__(self, layer, args, output):
        if self.state.recording:
            self.state.motion[self.name] = output[0] if isinstance(output, tuple) else output
        return None


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
                attn2 = _module_at(unet, name.removesuffix(".processor"))
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
                module = _module_at(self.temporal, adapter_path)
            except (AttributeError, IndexError):
                raise InputError(f"the motion adapter has no module {adapter_path}; it does not fit this UNet's layout") from None
            if module.in_channels != _out_channels(layer):
                raise InputError(f"motion adapter {adapter_path} has {module.in_channels} channels, the UNet's "
                                 f"{unet_path} gives {_out_channels(layer)}; use an adapter made for this base model")

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
            hook = TemporalHook(self.state, unet_path, _module_at(self.temporal, adapter_path))
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
        keep_frames = repeat(keep, "b -> (b f)", f=f) if exists(keep) else None
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
        return make_audio_encoder(self.config.audio_encoder, self.config.audio_dim, folder, device=device)

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


# ------------------------------------------------------------------------------------ AnimateDiff weights
# Original AnimateDiff motion-module names → diffusers MotionAdapter names (a rename, same tensors).
_ORIGINAL_RENAMES = (
    (".temporal_transformer.", "."),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
)


def original_to_diffusers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original AnimateDiff motion-module state dict to diffusers' MotionAdapter names.

    The sinusoidal position tables (`pos_encoder.pe`) are dropped: MotionAdapter recomputes them.
    """
    out = {}
    for k, v in state.items():
        if "pos_encoder" in k or "pos_embed" in k:
            continue
        for old, new in _ORIGINAL_RENAMES:
            k = k.replace(old, new)
        out[k] = v
    return out


def load_motion_adapter(path: str | Path, unet, config: MotionConfig):
    """AnimateDiff motion-module weights from a local folder or file, laid out for `unet`.

    Accepts a diffusers MotionAdapter folder (config.json + *.safetensors) or a .safetensors
    file (or a folder holding one) with the original AnimateDiff names. Safetensors only.
    """
    from diffusers import MotionAdapter
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"--motion-adapter {path}: no such file or folder")
    if path.is_dir() and (path / "config.json").is_file():
        if not any(path.glob("*.safetensors")):
            raise InputError(f"--motion-adapter {path}: no .safetensors weights; convert the adapter to safetensors first")
        return MotionAdapter.from_pretrained(path, use_safetensors=True, local_files_only=True)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files or files[0].suffix != ".safetensors":
        raise InputError(f"--motion-adapter {path}: expected a diffusers MotionAdapter folder or a .safetensors file")
    state = load_file(str(files[0]))
    renamed = original_to_diffusers_names(state)
    adapter = default_motion_adapter(unet, config)
    own = adapter.state_dict()
    unexpected = sorted(k for k in renamed if k not in own)
    missing = sorted(k for k in own if k not in renamed and not k.endswith(".pe"))
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise InputError(f"--motion-adapter {files[0]}: its weights do not fit this UNet "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {example})")
    for k, v in renamed.items():
        if own[k].shape != v.shape:
            raise InputError(f"--motion-adapter {files[0]}: {k} has shape {tuple(v.shape)}, this UNet needs {tuple(own[k].shape)}")
    adapter.load_state_dict(renamed, strict=False)
    return adapter
