"""Masked multi-head convolutional self-attention, global and local (docs/numerics.md s.4.5).

Front end shared by both: depthwise ``MaskedConv1D`` (no bias) -> channel LayerNorm -> 1x1 conv
for each of q, k, v. The depthwise kernel is ``stride + 1`` for a strided block and 3 otherwise;
a strided block downsamples inside these convs. (The reference has separate query and key/value
strides and its query conv uses the key/value one; they are always equal, so one ``stride`` is
taken here.) Channel ``c = head * d + j`` with ``d = C / n_head``.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ChannelLayerNorm, MaskedConv1D

PADDED_KEY_BIAS = -1e4      # additive score of a padded key inside the local band


class _MHCAFrontEnd(nn.Module):
    """Builds the q/k/v convs, norms and projections under the original parameter names."""

    def __init__(self, n_embd: int, n_head: int, stride: int) -> None:
        super().__init__()
        assert n_embd % n_head == 0
        self.n_embd = n_embd
        self.n_head = n_head
        self.n_channels = n_embd // n_head
        self.scale = 1.0 / math.sqrt(self.n_channels)
        self.stride = stride
        kernel = stride + 1 if stride > 1 else 3
        # creation order follows the reference (q conv/norm, k conv/norm, v conv/norm, then 1x1s)
        self.query_conv = MaskedConv1D(n_embd, n_embd, kernel, stride=stride, groups=n_embd, bias=False)
        self.query_norm = ChannelLayerNorm(n_embd)
        self.key_conv = MaskedConv1D(n_embd, n_embd, kernel, stride=stride, groups=n_embd, bias=False)
        self.key_norm = ChannelLayerNorm(n_embd)
        self.value_conv = MaskedConv1D(n_embd, n_embd, kernel, stride=stride, groups=n_embd, bias=False)
        self.value_norm = ChannelLayerNorm(n_embd)
        self.key = nn.Conv1d(n_embd, n_embd, 1)
        self.query = nn.Conv1d(n_embd, n_embd, 1)
        self.value = nn.Conv1d(n_embd, n_embd, 1)
        self.proj = nn.Conv1d(n_embd, n_embd, 1)

    def _qkv(self, x: torch.Tensor, mask: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns q, k, v as ``(B, h, T', d)`` and the query / key masks ``(B, 1, T')``."""
        q, q_mask = self.query_conv(x, mask)
        q = self.query_norm(q)
        k, kv_mask = self.key_conv(x, mask)
        k = self.key_norm(k)
        v, _ = self.value_conv(x, mask)
        v = self.value_norm(v)
        q, k, v = self.query(q), self.key(k), self.value(v)   # (B, C, T')
        return self._heads(q), self._heads(k), self._heads(v), q_mask, kv_mask

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape
        return x.view(b, self.n_head, self.n_channels, t).transpose(2, 3)   # (B, h, T, d)

    def _merge(self, out: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = out.shape                                              # (B, h, T, d)
        out = out.transpose(2, 3).contiguous().view(b, self.n_embd, t)     # (B, C, T)
        return self.proj(out) * q_mask.to(out.dtype)


class MaskedMHCA(_MHCAFrontEnd):
    """Global masked attention: padded keys get -inf, v is multiplied by the key mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # x: (B, C, T); mask: (B, 1, T) bool -> out (B, C, T'), out mask (B, 1, T')
        q, k, v, q_mask, kv_mask = self._qkv(x, mask)
        att = (q * self.scale) @ k.transpose(-2, -1)                       # (B, h, T', T')
        att = att.masked_fill(~kv_mask[:, :, None, :], float("-inf"))
        att = F.softmax(att, dim=-1)
        out = att @ (v * kv_mask[:, :, :, None].to(v.dtype))               # (B, h, T', d)
        return self._merge(out, q_mask), q_mask


class LocalMaskedMHCA(_MHCAFrontEnd):
    """Local (banded) masked attention with odd ``window_size``; query i sees keys ``[i-w, i+w]``.

    Band slots outside the sequence get -inf, padded keys inside it get -1e4 added, rows of
    padded queries are zeroed after the softmax, and v is not masked. Optional learnable
    ``rel_pe`` ``(1, 1, h, window)`` is added to the band scores before masking. Vectorised over
    positions (a loop over the 2w+1 band slots only); the reference's sliding-chunk kernel gives
    the same values up to reduction order.
    """

    def __init__(self, n_embd: int, n_head: int, window_size: int, stride: int = 1,
                 use_rel_pe: bool = False) -> None:
        super().__init__(n_embd, n_head, stride)
        assert window_size > 1 and window_size % 2 == 1
        self.window_size = window_size
        self.half = window_size // 2
        self.use_rel_pe = use_rel_pe
        if use_rel_pe:
            self.rel_pe = nn.Parameter(torch.zeros(1, 1, n_head, window_size))
            nn.init.trunc_normal_(self.rel_pe, std=(2.0 / n_embd) ** 0.5)

    def _shifted(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, h, T, d) -> 2w+1 views (B, h, T, d); view o holds position ``i - w + o`` (0 outside)."""
        t = x.shape[2]
        xp = F.pad(x, (0, 0, self.half, self.half))                         # (B, h, T + 2w, d)
        return [xp[:, :, o:o + t] for o in range(self.window_size)]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # x: (B, C, T); mask: (B, 1, T) bool -> out (B, C, T'), out mask (B, 1, T')
        q, k, v, q_mask, kv_mask = self._qkv(x, mask)
        h, t = q.shape[1], q.shape[2]
        w, win = self.half, self.window_size
        q = q * self.scale
        # one vectorised product per band slot (2w + 1 of them), not per position
        att = torch.stack([(q * k_o).sum(-1) for k_o in self._shifted(k)], dim=-1)   # (B, h, T, W)
        if self.use_rel_pe:
            att = att + self.rel_pe.view(h, win)[None, :, None, :]
        # slot o of query i is key j = i - w + o
        j = torch.arange(t, device=x.device)[:, None] + torch.arange(-w, w + 1, device=x.device)
        outside = (j < 0) | (j >= t)                                        # (T, W)
        key_ok = F.pad(kv_mask[:, 0], (w, w), value=True).unfold(1, win, 1)  # (B, T, W)
        att = att.masked_fill(outside, float("-inf"))
        att = att + (~key_ok).to(att.dtype)[:, None] * PADDED_KEY_BIAS
        att = F.softmax(att, dim=-1)
        att = att.masked_fill(~kv_mask[:, :, :, None], 0.0)                # padded query rows
        v_band = self._shifted(v)
        out = att[..., :1] * v_band[0]                                      # (B, h, T, d)
        for o in range(1, win):
            out = out + att[..., o:o + 1] * v_band[o]
        return self._merge(out, q_mask), q_mask


def make_attention(n_embd: int, n_head: int, window_size: int, stride: int = 1,
                   use_rel_pe: bool = False) -> nn.Module:
    """Local attention for ``window_size > 1``, global attention otherwise."""
    if window_size > 1:
        return LocalMaskedMHCA(n_embd, n_head, window_size, stride, use_rel_pe)
    return MaskedMHCA(n_embd, n_head, stride)
