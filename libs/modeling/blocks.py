"""Pre-LN transformer block of the ActionFormer backbone (docs/numerics.md s.4.4)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from .attention import make_attention
from .layers import AffineDropPath, ChannelLayerNorm, PointwiseConv1d, channels_last

MLP_RATIO = 4


class TransformerBlock(nn.Module):
    """``y = skip(x) * m' + DP(attn(ln1(x)))``; ``y = y + DP(mlp(ln2(y)) * m')``.

    With ``stride > 1`` the attention downsamples (strided q/k/v convs) and the skip is
    ``MaxPool1d(stride + 1, stride, (stride + 1) // 2)`` of the raw input. The MLP is
    1x1 conv C -> 4C, GELU (erf), Dropout, 1x1 conv 4C -> C, Dropout (state-dict ``mlp.0``,
    ``mlp.3``). ``DP`` is :class:`AffineDropPath` (LayerScale 1e-4 + stochastic depth) when
    ``droppath > 0``, otherwise identity (no LayerScale parameters at all).
    """

    def __init__(self, n_embd: int, n_head: int, *, window_size: int, stride: int = 1,
                 dropout: float = 0.0, droppath: float = 0.0, use_rel_pe: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.ln1 = ChannelLayerNorm(n_embd)
        self.ln2 = ChannelLayerNorm(n_embd)
        self.attn = make_attention(n_embd, n_head, window_size, stride, use_rel_pe)
        if stride > 1:
            self.pool_skip = nn.MaxPool1d(stride + 1, stride=stride, padding=(stride + 1) // 2)
        else:
            self.pool_skip = nn.Identity()
        hidden = MLP_RATIO * n_embd
        self.mlp = nn.Sequential(
            PointwiseConv1d(n_embd, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            PointwiseConv1d(hidden, n_embd),
            nn.Dropout(dropout),
        )
        if droppath > 0.0:
            self.drop_path_attn = AffineDropPath(n_embd, drop_prob=droppath)
            self.drop_path_mlp = AffineDropPath(n_embd, drop_prob=droppath)
        else:
            self.drop_path_attn = nn.Identity()
            self.drop_path_mlp = nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # x: (B, C, T); mask: (B, 1, T) bool -> (B, C, T / s), (B, 1, T / s)
        # everything below runs on (B, T, C) memory (fused LN, 1x1 convs as one matmul); the
        # output keeps it, so the next block starts without a copy
        x = channels_last(x)
        out, out_mask = self.attn(self.ln1(x), mask)
        m = out_mask.to(out.dtype)
        out = self.pool_skip(x) * m + self.drop_path_attn(out)
        out = out + self.drop_path_mlp(self.mlp(self.ln2(out)) * m)
        return out, out_mask
