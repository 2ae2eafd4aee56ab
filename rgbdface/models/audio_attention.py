"""Audio attention of stage 3 (paper §4.2, Fig. 2; supp. §7.1): audio windows → tokens → a decoupled cross-attention.

Each transformer block's cross-attention (`attn2`) of the joint denoiser gets an
`AudioAttnProcessor`: it computes the block's usual cross-attention over the cached
context and adds a cross-attention of the same normalised hidden states over the frame's
audio tokens (as IP-Adapter adds image tokens). The added attention's output projection
is zero-initialised (`MotionDenoiser`), so at the start of stage 3 the joint denoiser
computes exactly what it did after stage 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import nn

if TYPE_CHECKING:
    from rgbdface.models.motion import MotionState


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
