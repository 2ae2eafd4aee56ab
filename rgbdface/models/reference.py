"""ReferenceNet and mutual self-attention (paper §3.3; as in Animate Anyone and Hallo).

The ReferenceNet is a second UNet (RGB latent in) run once per reference at timestep 0.
In each of its transformer blocks, the normalised hidden states that enter
self-attention (`attn1`) are written to a `ReferenceBank`. In the denoiser's matching
block, self-attention reads them back: its keys and values are computed from
[own tokens | reference tokens], so every pixel can attend to the reference.

Both are diffusers attention processors, installed on `attn1` only; the UNet code is
untouched. Features are computed once per reference and reused at every denoising step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


@dataclass
class ReferenceBank:
    """Reference tokens per self-attention layer, and which denoiser samples may see them.

    features: layer name → [B_ref, N, C]; the denoiser's batch must be a multiple of B_ref
              (each reference is repeated for its consecutive samples / frames).
    keep:     optional [B] bool over the denoiser's batch; False drops the reference for
              that sample (reference dropout in training, the unconditional half of CFG).
    index:    optional [B] long: which reference each denoiser sample reads; by default
              each reference serves B / B_ref consecutive samples.
    """

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    keep: torch.Tensor | None = None
    index: torch.Tensor | None = None
    writing: bool = False
    # layer name → (keys, values) [B_ref, M, C] of the reference tokens, projected once per reference
    # and reused at every denoising step (inference only: with gradients they are recomputed each call)
    projected: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def clear(self) -> None:
        self.features.clear()
        self.projected.clear()
        self.keep = None
        self.index = None

    def __bool__(self) -> bool:  # a bank is "present" when it holds features
        return bool(self.features)


def _self_attention_names(unet) -> list[str]:
    return [name for name in unet.attn_processors if name.endswith("attn1.processor")]


class ReferenceWriteProcessor:
    """ReferenceNet side: record the normalised input of self-attention, then attend as usual."""

    def __init__(self, bank: ReferenceBank, name: str):
        self.bank, self.name, self.inner = bank, name, AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.bank.writing:
            self.bank.features[self.name] = hidden_states
            self.bank.projected.clear()  # new reference features: every cached projection is stale
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceReadProcessor:
    """Denoiser side: self-attention whose keys/values also cover the reference tokens."""

    def __init__(self, bank: ReferenceBank, name: str):
        self.bank, self.name, self.inner = bank, name, AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        ref = self.bank.features.get(self.name)
        keep = self.bank.keep
        if ref is None or (keep is not None and not bool(keep.any())):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        b, n, _ = hidden_states.shape  # [B, N, C]
        if self.bank.index is None and b % ref.shape[0]:
            raise ValueError(f"denoiser batch {b} is not a multiple of the reference batch {ref.shape[0]}")
        if (attention_mask is not None or hidden_states.ndim != 3 or attn.group_norm is not None
                or attn.spatial_norm is not None or getattr(attn, "norm_q", None) is not None):
            return self._attend_concatenated(attn, hidden_states, ref, keep, attention_mask, temb)

        # Keys and values of the reference tokens: projected once per reference when not training.
        # (Keyed by the layer itself too: a joint and a masked denoiser may share one bank.)
        key = f"{self.name}@{id(attn)}"
        cached = self.bank.projected.get(key)
        if cached is None or torch.is_grad_enabled():
            ref = ref.to(hidden_states.dtype)
            cached = (attn.to_k(ref), attn.to_v(ref))  # [B_ref, M, C] each
            if not torch.is_grad_enabled():
                self.bank.projected[key] = cached
        k_ref, v_ref = (self._per_sample(x, b) for x in cached)  # [B, M, C]
        k = torch.cat([attn.to_k(hidden_states), k_ref.to(hidden_states.dtype)], dim=1)  # [B, N + M, C]
        v = torch.cat([attn.to_v(hidden_states), v_ref.to(hidden_states.dtype)], dim=1)
        mask = None
        if keep is not None and not bool(keep.all()):
            # Some samples drop the reference: mask its keys out for them.
            mask = torch.ones(b, 1, 1, k.shape[1], dtype=torch.bool, device=k.device)
            mask[~keep.to(k.device), :, :, n:] = False
        return _attend_qkv(attn, hidden_states, attn.to_q(hidden_states), k, v, mask)

    def _per_sample(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """Reference rows [B_ref, ...] → one per denoiser sample [B, ...] (by `bank.index`, else consecutive repeats)."""
        if self.bank.index is not None:
            return x[self.bank.index.to(x.device)]
        return x if x.shape[0] == b else x.repeat_interleave(b // x.shape[0], dim=0)

    def _attend_concatenated(self, attn, hidden_states, ref, keep, attention_mask, temb):
        """The general path (attention layers with extra norms): attend over [own tokens | reference tokens]."""
        b, n, _ = hidden_states.shape
        ref = self._per_sample(ref, b).to(hidden_states.dtype)  # [B, M, C]
        context = torch.cat([hidden_states, ref], dim=1)  # [B, N + M, C]
        if keep is None or bool(keep.all()):
            return self.inner(attn, hidden_states, context, attention_mask, temb)
        visible = torch.ones(b, 1, 1, context.shape[1], dtype=torch.bool, device=context.device)
        visible[~keep.to(context.device), :, :, n:] = False
        return _attend_qkv(attn, hidden_states, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), visible)


def _attend_qkv(attn: Attention, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """Multi-head attention from projected q [B, N, C], k, v [B, K, C], with an optional boolean key mask [B, 1, 1, K]."""
    heads = attn.heads
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = rearrange(out, "b h n d -> b n (h d)").to(q.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor


def attach_reference(denoiser, reference_unet, bank: ReferenceBank) -> None:
    """Install mutual self-attention: `reference_unet` writes into `bank`, `denoiser` reads from it.

    The two UNets must share their block layout (the ReferenceNet is initialised from the
    denoiser's base UNet), so the self-attention layers pair up by name.
    """
    ref_names, den_names = _self_attention_names(reference_unet), _self_attention_names(denoiser)
    if ref_names != den_names:
        raise ValueError("ReferenceNet and denoiser have different transformer layouts")
    reference_unet.set_attn_processor(
        {n: (ReferenceWriteProcessor(bank, n) if n in ref_names else AttnProcessor2_0()) for n in reference_unet.attn_processors}
    )
    denoiser.set_attn_processor(
        {n: (ReferenceReadProcessor(bank, n) if n in den_names else p) for n, p in denoiser.attn_processors.items()}
    )
