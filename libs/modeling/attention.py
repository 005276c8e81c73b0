"""Masked multi-head convolutional self-attention, global and local (docs/numerics.md s.4.5).

Front end shared by both: depthwise ``MaskedConv1D`` (no bias) -> channel LayerNorm -> 1x1 conv
for each of q, k, v. The depthwise kernel is ``stride + 1`` for a strided block and 3 otherwise;
a strided block downsamples inside these convs. (The reference has separate query and key/value
strides and its query conv uses the key/value one; they are always equal, so one ``stride`` is
taken here.) Channel ``c = head * d + j`` with ``d = C / n_head``.

Layout: inputs and outputs are ``(B, C, T)``; inside, everything runs on the ``(B, T, C)`` view
(fused LayerNorm, 1x1 convs as one matmul, depthwise convs as shifted products), and the output
is a ``(B, C, T)`` tensor whose memory is ``(B, T, C)``, which the next block reads without a copy.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ChannelLayerNorm, MaskedConv1D, PointwiseConv1d, depthwise_conv_btc

PADDED_KEY_BIAS = -1e4      # additive score of a padded key inside the local band
BAND_BLOCK = 64             # queries per block of the banded local attention


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
        self.key = PointwiseConv1d(n_embd, n_embd)
        self.query = PointwiseConv1d(n_embd, n_embd)
        self.value = PointwiseConv1d(n_embd, n_embd)
        self.proj = PointwiseConv1d(n_embd, n_embd)

    def _qkv(self, x: torch.Tensor, mask: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``(B, C, T)`` -> q, k, v as ``(B, h, T', d)`` (views of ``(B, T', h, d)`` memory)
        and the query / key masks ``(B, 1, T')`` (equal)."""
        xt = x.transpose(1, 2)                                              # (B, T, C)
        out_mask = (mask[:, :, ::self.stride] if self.stride > 1 else mask).bool()
        m = out_mask.transpose(1, 2).to(x.dtype)                            # (B, T', 1)
        heads = []
        for conv, norm, proj in ((self.query_conv, self.query_norm, self.query),
                                 (self.key_conv, self.key_norm, self.key),
                                 (self.value_conv, self.value_norm, self.value)):
            y = depthwise_conv_btc(xt, conv.conv.weight, self.stride) * m   # MaskedConv1D
            heads.append(self._heads(proj.forward_btc(norm.forward_btc(y))))
        q, k, v = heads
        return q, k, v, out_mask, out_mask

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape                                                   # (B, T, C)
        return x.view(b, t, self.n_head, self.n_channels).transpose(1, 2)   # (B, h, T, d)

    def _merge(self, out: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        """``(B, h, T, d)`` -> ``proj(out) * m_q`` as ``(B, C, T)`` (memory ``(B, T, C)``)."""
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.n_embd)               # (B, T, C)
        out = self.proj.forward_btc(out) * q_mask.transpose(1, 2).to(out.dtype)
        return out.transpose(1, 2)


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


def band_block(t: int) -> int:
    """Queries per block for length ``t``: ``t`` itself up to :data:`BAND_BLOCK`, else the largest
    divisor of ``t`` in ``[BAND_BLOCK / 2, BAND_BLOCK]`` (no tail block), else BAND_BLOCK."""
    if t <= BAND_BLOCK:
        return t
    for q_len in range(BAND_BLOCK, BAND_BLOCK // 2 - 1, -1):
        if t % q_len == 0:
            return q_len
    return BAND_BLOCK


def band_bias(kv_mask: torch.Tensor, half: int, block: int, rel_pe: torch.Tensor | None
              ) -> torch.Tensor:
    """Additive scores of the blocked band ``(B, h or 1, nb, Q, Q + 2w)`` (see
    :func:`band_attention`): -inf off the band ``|j - i| <= w`` and outside ``[0, T)``, -1e4 on a
    padded key, ``rel_pe[h, j - i + w]`` on the band (``rel_pe (h, 2w + 1)`` or None)."""
    t = kv_mask.shape[-1]
    w, q_len = half, block
    nb = -(-t // q_len)
    a = torch.arange(q_len, device=kv_mask.device)[:, None]                # query in block
    c = torch.arange(q_len + 2 * w, device=kv_mask.device)[None, :]        # key slot
    j = torch.arange(nb, device=kv_mask.device)[:, None, None] * q_len + (c - w)   # (nb, 1, S)
    i = torch.arange(nb, device=kv_mask.device)[:, None, None] * q_len + a  # (nb, Q, 1)
    # tail rows (i >= T, cut off after) keep finite scores: no all -inf row, no NaN gradient
    inside = ((c - a >= 0) & (c - a <= 2 * w) & (j >= 0) & (j < t)) | (i >= t)   # (nb, Q, S)
    key_ok = F.pad(kv_mask[:, 0], (w, nb * q_len - t + w), value=True).unfold(1, q_len + 2 * w, q_len)
    dtype = rel_pe.dtype if rel_pe is not None else torch.float32
    bias = (~key_ok).to(dtype)[:, None, :, None, :] * PADDED_KEY_BIAS      # (B, 1, nb, 1, S)
    bias = bias.masked_fill(~inside[None, None], float("-inf"))            # (B, 1, nb, Q, S)
    if rel_pe is not None:
        rel = rel_pe[:, (c - a).clamp(0, 2 * w)]                           # (h, Q, S)
        bias = bias + rel[None, :, None]
    return bias


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                   half: int, block: int) -> torch.Tensor:
    """``O_i = sum_{|j - i| <= w} softmax_j(q_i . k_j + bias_ij) v_j`` for ``(B, h, T, d)`` inputs.

    Queries are cut into blocks of ``Q = block``; block ``n`` scores the keys ``nQ - w ..
    nQ + Q - 1 + w`` (``Q + 2w`` slots, zero-padded at the ends) in one batched matmul; ``bias``
    (:func:`band_bias`) removes the slots off each query's band. Equal to the ``2w + 1``-slot band
    softmax up to reduction order (exp(-inf) = 0 exactly).
    """
    b, h, t, d = q.shape
    w, q_len = half, block
    nb = -(-t // q_len)
    tail = nb * q_len - t
    span = q_len + 2 * w
    qb = F.pad(q, (0, 0, 0, tail)).reshape(b, h, nb, q_len, d)               # (B, h, nb, Q, d)
    kp, vp = F.pad(k, (0, 0, w, tail + w)), F.pad(v, (0, 0, w, tail + w))   # (B, h, T + .., d)
    # the blocks' key windows as one contiguous tensor (faster than unfold views, backward too)
    kb = torch.stack([kp[:, :, n * q_len:n * q_len + span] for n in range(nb)], dim=2)
    vb = torch.stack([vp[:, :, n * q_len:n * q_len + span] for n in range(nb)], dim=2)
    att = torch.matmul(qb, kb.transpose(-1, -2))                            # (B, h, nb, Q, S)
    att = F.softmax(att + bias.to(att.dtype), dim=-1)
    out = torch.matmul(att, vb)                                             # (B, h, nb, Q, d)
    return out.reshape(b, h, nb * q_len, d)[:, :, :t]


class LocalMaskedMHCA(_MHCAFrontEnd):
    """Local (banded) masked attention with odd ``window_size``; query i sees keys ``[i-w, i+w]``.

    Band slots outside the sequence get -inf, padded keys inside it get -1e4 added, and v is not
    masked; rows of padded queries are zeroed by the output mask (the reference zeroes them after
    the softmax: the same output and gradients). Optional learnable ``rel_pe`` ``(1, 1, h,
    window)`` is added to the band scores before masking. Computed blockwise as batched matmuls
    (:func:`band_attention`); the reference's sliding-chunk kernel gives the same values up to
    reduction order.
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # x: (B, C, T); mask: (B, 1, T) bool -> out (B, C, T'), out mask (B, 1, T')
        q, k, v, q_mask, kv_mask = self._qkv(x, mask)
        h, t = q.shape[1], q.shape[2]
        block = band_block(t)
        rel = self.rel_pe.view(h, self.window_size) if self.use_rel_pe else None
        bias = band_bias(kv_mask, self.half, block, rel)
        out = band_attention(q * self.scale, k, v, bias, self.half, block)   # (B, h, T', d)
        return self._merge(out, q_mask), q_mask


def make_attention(n_embd: int, n_head: int, window_size: int, stride: int = 1,
                   use_rel_pe: bool = False) -> nn.Module:
    """Local attention for ``window_size > 1``, global attention otherwise."""
    if window_size > 1:
        return LocalMaskedMHCA(n_embd, n_head, window_size, stride, use_rel_pe)
    return MaskedMHCA(n_embd, n_head, stride)
