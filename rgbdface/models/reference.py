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
    # What the layers of one call share, settled once per call by `set_call` (see there)
    keep_any: bool = True  # some sample sees the reference
    keep_all: bool = True  # every sample sees it (no key mask needed)
    masks: dict[tuple, torch.Tensor] = field(default_factory=dict)  # (B, N, M) → boolean key mask [B, 1, 1, N + M]
    _keep_memo: tuple | None = field(default=None, repr=False)  # (tensor given, device asked, on device, any, all)
    _index_memo: tuple | None = field(default=None, repr=False)  # (tensor given, device asked, on device)

    def set_call(self, keep: torch.Tensor | None = None, index: torch.Tensor | None = None,
                 device: torch.device | None = None) -> None:
        """The per-sample reference dropout and reference index of the next denoiser calls.

        Moved to `device` and summarised on the host once, so that no attention layer reads a
        device tensor back (a host-device sync per layer) or builds its own mask. The same
        `keep` tensor passed again (a sampler's every step) reuses both, so it costs at most
        one transfer for a whole sampling run, and none at all when it is made on the CPU.
        """
        self.masks.clear()
        if keep is None:
            self.keep, self.keep_any, self.keep_all = None, True, True
        else:
            memo = self._keep_memo
            if memo is None or memo[0] is not keep or memo[1] != device:
                host = keep.tolist()  # the one read-back (free for a CPU tensor)
                on_device = keep.to(device=device or keep.device, dtype=torch.bool)
                memo = self._keep_memo = (keep, device, on_device, any(host), all(host))
            self.keep, self.keep_any, self.keep_all = memo[2:]
        if index is not None and device is not None:
            memo = self._index_memo
            if memo is None or memo[0] is not index or memo[1] != device:
                memo = self._index_memo = (index, device, index.to(device))
            index = memo[2]
        self.index = index

    def key_mask(self, b: int, n: int, m: int, device: torch.device) -> torch.Tensor:
        """[B, 1, 1, N + M] bool: own tokens always visible, the reference's only where kept (built once per shape and call)."""
        mask = self.masks.get((b, n, m))
        if mask is None:
            keep = self.keep.to(device)[:, None, None, None].expand(b, 1, 1, m)
            mask = torch.cat([torch.ones(b, 1, 1, n, dtype=torch.bool, device=device), keep], dim=-1)
            self.masks[(b, n, m)] = mask
        return mask

    def clear(self) -> None:
        self.features.clear()
        self.projected.clear()
        self.set_call(None, None)

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
        if ref is None or not self.bank.keep_any:  # no reference, or every sample drops it
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        b, n, _ = hidden_states.shape  # [B, N, C]
        if self.bank.index is None and b % ref.shape[0]:
            raise ValueError(f"denoiser batch {b} is not a multiple of the reference batch {ref.shape[0]}")
        if (attention_mask is not None or hidden_states.ndim != 3 or attn.group_norm is not None
                or attn.spatial_norm is not None or getattr(attn, "norm_q", None) is not None):
            return self._attend_concatenated(attn, hidden_states, ref, attention_mask, temb)

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
        # Some samples drop the reference: its keys are masked out for them.
        mask = None if self.bank.keep_all else self.bank.key_mask(b, n, k.shape[1] - n, k.device)
        return _attend_qkv(attn, hidden_states, attn.to_q(hidden_states), k, v, mask)

    def _per_sample(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """Reference rows [B_ref, ...] → one per denoiser sample [B, ...] (by `bank.index`, else consecutive repeats)."""
        if self.bank.index is not None:
            return x[self.bank.index]
        return x if x.shape[0] == b else x.repeat_interleave(b // x.shape[0], dim=0)

    def _attend_concatenated(self, attn, hidden_states, ref, attention_mask, temb):
        """The general path (attention layers with extra norms): attend over [own tokens | reference tokens]."""
        b, n, _ = hidden_states.shape
        ref = self._per_sample(ref, b).to(hidden_states.dtype)  # [B, M, C]
        context = torch.cat([hidden_states, ref], dim=1)  # [B, N + M, C]
        if self.bank.keep_all:
            return self.inner(attn, hidden_states, context, attention_mask, temb)
        mask = self.bank.key_mask(b, n, ref.shape[1], context.device)
        return _attend_qkv(attn, hidden_states, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), mask)


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
