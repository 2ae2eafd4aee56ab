"""What each stage trains and the loss it minimises; the loop (loop.py) is the same for all three.

Stage 1 (`train`)          joint denoiser + ReferenceNet; loss = paper eq. (5):
                           ‖[ε_rgb, ε_depth] − ε_θ([z_t^rgb, z_t^depth], z_ref, t)‖²
Stage 2 (`finetune-mask`)  the masked denoiser (and optionally its own ReferenceNet); the same
                           loss over the generated (mask = 1) latent cells
Stage 3 (`train-motion`)   audio projection/attention + temporal modules only (model.motion);
                           eq. (5) over every frame of a clip; everything from stage 1 frozen

Invalid depth: the codec encodes pixels without depth as the far value (+1), so a latent
cell whose pixels all lack depth is "background = far". Such cells count in the depth loss
with weight `loss.depth_background_weight` (1 = the paper's plain MSE, which teaches the
model to generate far background that inference thresholds away; 0 = ignore them).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from rgbdface.models.model import RGBDFaceModel
from rgbdface.models.unet import masked_inputs
from rgbdface.training.config import RunConfig


def unreachable_reference_parameters(denoiser) -> list[str]:
    """ReferenceNet parameters that provably get no gradient: nothing written to the bank depends on them.

    The ReferenceNet's output (conv_norm_out, conv_out) and, in its last transformer block, everything
    after the input of self-attention are never read by the denoiser. Found by autograd on one small
    probe input (the graph's structure does not depend on values or sizes).
    """
    ref = denoiser.reference_unet
    named = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    side = 2 ** (len(ref.config.block_out_channels) - 1)
    z = torch.zeros(1, ref.config.in_channels, side, side, device=ref.device, dtype=ref.dtype)
    ctx = torch.zeros(1, 1, ref.config.cross_attention_dim, device=ref.device, dtype=ref.dtype)
    with torch.enable_grad():
        denoiser.set_reference(z, ctx)
        total = sum(f.float().sum() for f in denoiser.bank.features.values())
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    denoiser.clear_reference()
    return [n for (n, _), g in zip(named, grads) if g is None]


class Objective(nn.Module):
    """A stage: which parameters train, and `forward(batch) → (loss, logged parts)`.

    Wrapped as one module by Accelerate (DDP), so every trainable parameter is used in each forward.
    """

    stage: int = 0

    def __init__(self, model: RGBDFaceModel, cfg: RunConfig):
        super().__init__()
        # The model is not a submodule: only the parts this stage runs are (`parts`), so that
        # moving the objective to a device (Accelerate's prepare) and DDP take those alone;
        # the rest of the model (e.g. the joint UNet in stage 2) stays on the CPU.
        self.__dict__["model"] = model
        self.cfg = cfg
        self.noise_scheduler = model.noise_scheduler()
        self.cache: dict | None = {} if cfg.data.cache_latents else None
        self.frozen_unreachable: list[str] = []
        self._full_precision: dict[nn.Parameter, torch.Tensor] = {}  # frozen weights cast down → their float32 values
        model.requires_grad_(False)
        model.eval()
        self.select_trainable()
        for m in self.trainable_modules():
            m.train()
        parts = []
        for m in [model.codec, *self.frozen_modules(), *self.trainable_modules()]:
            if not any(m is p for p in parts):
                parts.append(m)
        self.parts = nn.ModuleList(parts)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.model.context = fn(self.model.context)  # the cached text embedding goes where the parts go
        return self

    # -- precision -----------------------------------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        """Modules the stage runs without training them (beside the VAE)."""
        return []

    @torch.no_grad()
    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Frozen parts (the VAE, the frozen UNets) in `dtype`, as diffusers' training scripts keep
        them: half the memory, and autocast no longer re-casts their weights at every op. Their
        float32 values are kept on the CPU, so that saved models keep them bit for bit."""
        if dtype == torch.float32:
            return
        trained = set(self.trainable().values())
        for m in [self.model.codec, *self.frozen_modules()]:
            if any(p in trained for p in m.parameters()):
                continue
            for p in m.parameters():
                if p not in self._full_precision and p.is_floating_point():
                    self._full_precision[p] = p.data.to("cpu", copy=True)
                    p.data = p.data.to(dtype)

    @contextlib.contextmanager
    def full_precision(self):
        """The frozen parts with their float32 values while inside (to save the model)."""
        low = {p: p.data for p in self._full_precision}
        for p, full in self._full_precision.items():
            p.data = full
        try:
            yield
        finally:
            for p, data in low.items():
                p.data = data

    # -- what trains -------------------------------------------------------------------------
    def select_trainable(self) -> None:
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def trainable(self) -> dict[str, nn.Parameter]:
        """name (within the model) → parameter, in a fixed order."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _freeze_unreachable(self, denoiser) -> None:
        names = unreachable_reference_parameters(denoiser)
        params = dict(denoiser.reference_unet.named_parameters())
        for n in names:
            params[n].requires_grad_(False)
        self.frozen_unreachable += names

    def enable_gradient_checkpointing(self) -> None:
        for m in self.trainable_modules():
            if hasattr(m, "enable_gradient_checkpointing"):
                m.enable_gradient_checkpointing()

    # -- latents -------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, kind: str, x: torch.Tensor, keys: list | None) -> torch.Tensor:
        """VAE latents of RGB [B, 3, S, S] or depth [B, 1, S, S] (raw, 0 = invalid); cached per sample if asked.

        Cached latents are encoded one sample at a time, so a latent does not depend on its batch.
        """
        codec = self.model.codec
        encode = codec.encode_depth if kind.startswith("depth") else codec.encode_rgb

        def enc(v):  # float32 latents even under fp16 autocast: the noise and the loss are float32
            return encode(v).float()

        x = x.to(self.model.device)
        if self.cache is None or keys is None:
            return enc(x)
        out = []
        for xi, k in zip(x, keys):
            if k is None:  # an augmented image: encoded afresh, alone (a latent does not depend on its batch)
                out.append(enc(xi[None])[0])
                continue
            key = (kind, k)
            if key not in self.cache:
                self.cache[key] = enc(xi[None])[0]
            out.append(self.cache[key])
        return torch.stack(out)

    def _target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to output: the noise (eq. 5, `epsilon`), or the velocity
        sqrt(ᾱ)·ε − sqrt(1−ᾱ)·z₀ (`v_prediction`), as the model's noise schedule declares."""
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(z0, noise, t)
        raise ValueError(f"prediction_type {kind!r} is not supported; use epsilon or v_prediction")

    def _depth_weights(self, depth: torch.Tensor, keys: list | None = None) -> torch.Tensor:
        """[B, 1, h, w] per latent cell: 1 with any valid depth pixel, else loss.depth_background_weight
        (cached per sample with the latents, so that a held sample's depth need not be decoded again)."""
        if self.cache is None or keys is None:
            valid = self._cells(depth > 0)
        else:
            for d, k in zip(depth, keys):
                if ("valid", k) not in self.cache:
                    self.cache[("valid", k)] = self._cells(d[None] > 0)[0]
            valid = torch.stack([self.cache[("valid", k)] for k in keys])
        bg = self.cfg.loss.depth_background_weight
        return self.cfg.loss.depth_weight * torch.where(valid, 1.0, bg)

    def _cells(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] pixel mask → [B, 1, h, w]: the latent cells with any pixel of it."""
        return F.max_pool2d(pixels.float(), self.model.codec.downsample) > 0

    @staticmethod
    def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor, c: int) -> tuple[torch.Tensor, dict]:
        se = (pred.float() - target.float()) ** 2  # [..., 2C, h, w]
        loss = (w * se).sum() / w.sum().clamp_min(1e-8)
        parts = {"loss_rgb": se[..., :c, :, :].mean().detach(), "loss_depth": se[..., c:, :, :].mean().detach()}
        return loss, parts

    def finish(self) -> None:
        """Called after backward: drop the reference features held for gradient checkpointing's recompute."""
        self.model.joint.bank.clear()
        if self.model.masked is not None:
            self.model.masked.bank.clear()


class JointObjective(Objective):
    """Stage 1: eq. (5) with the joint denoiser and its ReferenceNet both trained."""

    stage = 1

    def select_trainable(self) -> None:
        self.model.joint.unet.requires_grad_(True)
        self.model.joint.reference_unet.requires_grad_(True)
        self._freeze_unreachable(self.model.joint)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.model.joint.unet, self.model.joint.reference_unet]

    @property
    def denoiser(self):
        return self.model.joint

    @property
    def reference_trains(self) -> bool:
        return True

    def conditioning(self, batch: dict, z_rgb: torch.Tensor, z_depth: torch.Tensor):
        """Extra input channels and loss weights per channel (none for the joint denoiser)."""
        return None, None

    def known_in_noisy(self, batch: dict, z0: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """The noisy latents the denoiser reads (the joint denoiser: z_t as is)."""
        return z_t

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        model, c = self.model, self.model.meta.latent_channels
        dev = model.device
        # 1. Latents of target RGB, target depth and reference (VAE, frozen)
        depth_keys = [(int(i), bool(f)) for i, f in zip(batch["index"], batch["flipped"])]  # a mirrored sample has latents of its own
        ref_keys = [(int(j), bool(m) != bool(f)) for j, m, f in zip(batch["ref_index"], batch["mirrored"], batch["flipped"])]
        fresh = [bool(x) for x in batch["fresh"]] if "fresh" in batch else [False] * len(depth_keys)
        z_depth = self._encode("depth", batch["depth"], depth_keys)  # [B, C, h, w]
        keys = [None if f else k for k, f in zip(depth_keys, fresh)]  # augmented RGB: not cached
        ref_keys = [None if f else k for k, f in zip(ref_keys, fresh)]
        z_rgb = self._encode("rgb", batch["rgb"], keys)  # [B, C, h, w]
        z_ref = self._encode("reference", batch["reference"], ref_keys)  # [B, C, h, w]

        # 2. Forward diffusion of both latents with independent noise (eqs. 3–4)
        noise = batch["noise"].to(dev, z_rgb.dtype)  # [B, 2C, h, w]
        t = batch["timestep"].to(dev)  # [B]
        z0 = torch.cat([z_rgb, z_depth], dim=1)  # [B, 2C, h, w]
        z_t = self.noise_scheduler.add_noise(z0, noise, t)  # [B, 2C, h, w]
        cond, mask_w = self.conditioning(batch, z_rgb, z_depth)
        z_t = self.known_in_noisy(batch, z0, z_t)
        x = z_t if cond is None else torch.cat([z_t, cond], dim=1)  # [B, 2C (+2C+2), h, w]

        # 3. ReferenceNet once, then the denoiser reads its features (mutual self-attention)
        den = self.denoiser
        ctx = model.context.to(x.dtype)
        with torch.set_grad_enabled(self.reference_trains and torch.is_grad_enabled()):
            den.set_reference(z_ref, ctx)
        den.bank.set_call(batch["keep"], None, dev)  # [B] reference dropout for CFG
        pred = den.unet(x, t, encoder_hidden_states=ctx.expand(x.shape[0], -1, -1)).sample  # [B, 2C, h, w]

        # 4. Eq. (5), with the depth half weighted by validity (and stage-2 masks)
        depth_w = self._depth_weights(batch["depth"].to(dev), depth_keys)  # [B, 1, h, w]
        w = torch.cat([torch.ones_like(z_rgb), depth_w.expand(-1, c, -1, -1)], dim=1)  # [B, 2C, h, w]
        if mask_w is not None:
            w = w * mask_w
        loss, parts = self._weighted_mse(pred, self._target(z0, noise, t), w, c)
        if self.reference_trains:
            # Keeps every ReferenceNet parameter in the graph when a whole batch drops the reference (DDP).
            loss = loss + 0.0 * sum(f.float().sum() for f in den.bank.features.values())
        return loss, parts


class MaskedObjective(JointObjective):
    """Stage 2: the masked denoiser; the known domain enters as masked latents, its noisy copy is the
    forward-diffused ground truth (as sampling.py feeds it at inference)."""

    stage = 2

    def select_trainable(self) -> None:
        m = self.model
        if m.masked is None:
            m.add_masked_denoiser(own_reference=self.cfg.masks.own_reference)
        m.masked.unet.requires_grad_(True)
        if self.reference_trains:
            m.masked.reference_unet.requires_grad_(True)
            self._freeze_unreachable(m.masked)

    @property
    def reference_trains(self) -> bool:
        return self.model.masked is not None and self.model.masked.reference_unet is not self.model.joint.reference_unet

    def trainable_modules(self) -> list[nn.Module]:
        m = self.model
        return [m.masked.unet] + ([m.masked.reference_unet] if self.reference_trains else [])

    def frozen_modules(self) -> list[nn.Module]:
        return [] if self.reference_trains else [self.model.masked.reference_unet]  # the shared stage-1 ReferenceNet

    @property
    def denoiser(self):
        return self.model.masked

    def conditioning(self, batch: dict, z_rgb: torch.Tensor, z_depth: torch.Tensor):
        c = z_rgb.shape[1]
        m_rgb = batch["m_rgb"].to(z_rgb.device, z_rgb.dtype)  # [B, 1, h, w], 1 = generate
        m_depth = batch["m_depth"].to(z_rgb.device, z_rgb.dtype)
        cond = masked_inputs(z_rgb, z_depth, m_rgb, m_depth)  # [B, 2C + 2, h, w]
        m_full = torch.cat([m_rgb.expand(-1, c, -1, -1), m_depth.expand(-1, c, -1, -1)], dim=1)  # [B, 2C, h, w]
        kw = self.cfg.masks.known_weight
        return cond, m_full + kw * (1 - m_full)

    def known_in_noisy(self, batch: dict, z0: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """masks.known_latents = "clean": kept cells carry the clean latent in the noisy slots too (as sampling does)."""
        if self.cfg.masks.known_latents == "noised":
            return z_t
        c = z0.shape[1] // 2
        m_rgb = batch["m_rgb"].to(z0.device, z0.dtype).expand(-1, c, -1, -1)  # [B, C, h, w], 1 = generate
        m_depth = batch["m_depth"].to(z0.device, z0.dtype).expand(-1, c, -1, -1)
        m_full = torch.cat([m_rgb, m_depth], dim=1)  # [B, 2C, h, w]
        return m_full * z_t + (1 - m_full) * z0


class MotionObjective(Objective):
    """Stage 3: clips of F frames; only model.motion's trainable parameters learn."""

    stage = 3

    def select_trainable(self) -> None:
        for m in self.trainable_modules():
            m.requires_grad_(True)

    @property
    def audio_only(self) -> bool:
        return self.cfg.motion is not None and self.cfg.motion.train == "audio"

    def trainable_modules(self) -> list[nn.Module]:
        mo = self.model.motion
        return [mo.audio_proj, mo.audio_attn] + ([] if self.audio_only else [mo.temporal])

    def frozen_modules(self) -> list[nn.Module]:
        # stage 1, which the hooks extend (and the temporal modules when only the audio parts learn)
        return [self.model.joint.unet, self.model.joint.reference_unet] + ([self.model.motion.temporal] if self.audio_only else [])

    def enable_gradient_checkpointing(self) -> None:
        # diffusers recomputes the frozen UNet's blocks; the temporal modules hooked after its
        # transformers sit outside those checkpoints and recompute their own.
        self.model.joint.unet.enable_gradient_checkpointing()
        self.model.motion.state.checkpoint = True

    def finish(self) -> None:
        motion = self.model.motion
        motion.state.frames, motion.state.audio_tokens = None, None
        motion.clear()
        super().finish()

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        model, c = self.model, self.model.meta.latent_channels
        motion, den = model.motion, model.joint
        dev = model.device
        b, f = batch["rgb"].shape[:2]
        # 1. Latents of the clip, its motion frames and the reference (VAE, frozen)
        z_rgb = self._encode("rgb", rearrange(batch["rgb"], "b f c h w -> (b f) c h w"), None)  # [(B F), C, h, w]
        z_depth = self._encode("depth", rearrange(batch["depth"], "b f c h w -> (b f) c h w"), None)
        z_ref = self._encode("reference", batch["reference"], None)  # [B, C, h, w]
        m = batch["motion"].shape[1]
        z_motion = (rearrange(self._encode("rgb", rearrange(batch["motion"], "b m c h w -> (b m) c h w"), None),
                              "(b m) c h w -> b m c h w", b=b) if m else z_ref.new_zeros(b, 0, *z_ref.shape[1:]))

        # 2. Forward diffusion, one timestep per clip
        noise = rearrange(batch["noise"].to(dev, z_rgb.dtype), "b f c h w -> (b f) c h w")  # [(B F), 2C, h, w]
        t = repeat(batch["timestep"].to(dev), "b -> (b f)", f=f)  # [(B F)]
        z0 = torch.cat([z_rgb, z_depth], dim=1)  # [(B F), 2C, h, w]
        z_t = self.noise_scheduler.add_noise(z0, noise, t)  # [(B F), 2C, h, w]

        # 3. Frozen ReferenceNet on the reference and the motion frames (no gradient needed)
        ctx = model.context.to(z_t.dtype)
        with torch.no_grad():
            motion.set_reference(z_ref, ctx)
            motion.set_motion(z_motion, ctx)

        # 4. Audio tokens, then all frames through the denoiser with audio and temporal attention.
        #    As MotionDenoiser.forward, but the per-call state stays set until `finish` (after
        #    backward), so that gradient checkpointing recomputes the same function.
        tokens = motion.audio_proj(rearrange(batch["audio"].to(dev, z_t.dtype), "b f k a -> (b f) k a"))  # [(B F), T, D]
        motion.state.frames, motion.state.audio_tokens = f, tokens
        den.bank.set_call(repeat(batch["keep"], "b -> (b f)", f=f), None, dev)  # reference dropout per clip
        pred = den.unet(z_t, t, encoder_hidden_states=ctx.expand(z_t.shape[0], -1, -1)).sample  # [(B F), 2C, h, w]

        # 5. Eq. (5) over every frame
        depth_w = self._depth_weights(rearrange(batch["depth"].to(dev), "b f c h w -> (b f) c h w"))  # [(B F), 1, h, w]
        w = torch.cat([torch.ones_like(z_rgb), depth_w.expand(-1, c, -1, -1)], dim=1)
        if "mouth" in batch:  # loss.mouth_weight on every latent cell that touches the mouth region
            mouth = self._cells(rearrange(batch["mouth"].to(dev), "b f c h w -> (b f) c h w") > 0)
            w = w * torch.where(mouth, self.cfg.loss.mouth_weight, 1.0)
        return self._weighted_mse(pred, self._target(z0, noise, t), w, c)


OBJECTIVES = {1: JointObjective, 2: MaskedObjective, 3: MotionObjective}


def make_objective(model: RGBDFaceModel, cfg: RunConfig) -> Objective:
    return OBJECTIVES[cfg.stage](model, cfg)


def digest(params: dict[str, torch.Tensor]) -> str:
    """A hash of the exact bytes of the given tensors (to check that processes agree)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for n in sorted(params):
        h.update(n.encode())
        h.update(params[n].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

