"""Classification and regression heads shared across pyramid levels (docs/numerics.md s.4.7).

Each head has ``num_layers - 1`` blocks ``MaskedConv1D(k) -> LN -> ReLU`` (``head.{i}``,
``norm.{i}``) and an output ``MaskedConv1D``. Inputs are lists of ``(B, C, T_l)`` features and
``(B, 1, T_l)`` bool masks; outputs are lists of ``(B, C_out, T_l)`` float32 (views of
``(B, T_l, C_out)`` memory). All levels run in one call per layer, in channels-last memory
(:class:`LevelPack`); the output convs run in float32 under autocast.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ChannelLayerNorm, MaskedConv1D, Scale, conv1d_btc, maybe_norm

EMPTY_CLS_PRIOR = 1e-6
PACK_MULTIPLE = 16      # packed length rounded up to this (oneDNN's bf16 convs are 2x slower otherwise)


def prior_bias(prob: float) -> float:
    """Logit bias ``-log((1 - p) / p)`` giving an initial sigmoid output of ``p``."""
    return -math.log((1.0 - prob) / prob)


class LevelPack(NamedTuple):
    """All pyramid levels one after another along time in channels-last memory, ``gap`` zero
    rows between two levels.

    ``x`` ``(B, P, C)`` contiguous, ``P = sum T_l + (L - 1) gap`` rounded up to a multiple of
    :data:`PACK_MULTIPLE` with zero rows at the end; ``mask`` ``(B, P, 1)`` bool (False on the
    gaps and the end); ``keep`` ``(1, P, 1)`` float, 1 on level positions and 0 on the gaps;
    ``starts``/``lengths``: where level ``l`` lies in ``P``.
    """
    x: torch.Tensor
    mask: torch.Tensor
    keep: torch.Tensor
    starts: List[int]
    lengths: List[int]

    @staticmethod
    def build(feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], gap: int) -> "LevelPack":
        """``feats``: per level ``(B, C, T_l)`` (a view of ``(B, T_l, C)`` memory is read without
        a transposed copy); ``masks``: per level ``(B, 1, T_l)``."""
        lengths = [int(f.shape[-1]) for f in feats]
        starts = [sum(lengths[:i]) + i * gap for i in range(len(lengths))]
        f0 = feats[0]
        b, c = f0.shape[0], f0.shape[1]
        xs: List[torch.Tensor] = []
        ms: List[torch.Tensor] = []
        keep: List[torch.Tensor] = []

        def zeros(n: int) -> None:
            xs.append(f0.new_zeros(b, n, c))
            ms.append(torch.zeros(b, n, 1, dtype=torch.bool, device=f0.device))
            keep.append(torch.zeros(n, dtype=f0.dtype, device=f0.device))

        for i, (f, m) in enumerate(zip(feats, masks)):
            if i > 0 and gap > 0:
                zeros(gap)
            xs.append(f.transpose(1, 2))
            ms.append(m.bool().transpose(1, 2))
            keep.append(torch.ones(f.shape[-1], dtype=f0.dtype, device=f0.device))
        tail = -(starts[-1] + lengths[-1]) % PACK_MULTIPLE
        if tail:                          # trailing zero rows: an aligned length for the convs
            zeros(tail)
        return LevelPack(torch.cat(xs, dim=1), torch.cat(ms, dim=1), torch.cat(keep).view(1, -1, 1),
                         starts, lengths)

    def split(self, y: torch.Tensor) -> List[torch.Tensor]:
        """``(B, P, K)`` -> per level ``(B, K, T_l)`` (views of ``(B, T_l, K)`` memory)."""
        return [y[:, s:s + n].transpose(1, 2) for s, n in zip(self.starts, self.lengths)]


def _norm_btc(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's LN (or identity) on a ``(B, P, C)`` tensor."""
    return norm.forward_btc(x) if isinstance(norm, ChannelLayerNorm) else norm(x)


def _masked_conv_btc(conv: MaskedConv1D, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``MaskedConv1D`` on ``(B, P, C)`` memory: ``conv(x) * mask``, ``mask`` ``(B, P, 1)``."""
    out = conv1d_btc(conv.conv, x)
    return out * mask.to(out.dtype)


class _HeadTrunk(nn.Module):
    """``num_layers - 1`` blocks conv -> LN -> ReLU, run on every level at once: the levels are
    packed along time (:class:`LevelPack`) with ``kernel_size // 2`` zero rows between two
    levels, which are re-zeroed after each block, so no conv mixes levels (the same values as one
    call per level, in one conv call per layer). The pack is channels-last ``(B, P, C)`` memory:
    the convs run on it directly (:func:`conv1d_btc`) and each LN is one fused kernel."""

    def __init__(self, input_dim: int, feat_dim: int, num_layers: int, kernel_size: int,
                 with_ln: bool) -> None:
        super().__init__()
        self.head = nn.ModuleList()
        self.norm = nn.ModuleList()
        self.kernel_size = kernel_size
        for i in range(num_layers - 1):
            self.head.append(MaskedConv1D(input_dim if i == 0 else feat_dim, feat_dim, kernel_size,
                                          bias=not with_ln))
            self.norm.append(maybe_norm(feat_dim, with_ln))

    def _pack(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> LevelPack:
        return LevelPack.build(feats, masks, self.kernel_size // 2)

    def _trunk(self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x (B, P, C); mask (B, P, 1); keep (1, P, 1): 0 on the gaps between levels
        for conv, norm in zip(self.head, self.norm):
            x = _masked_conv_btc(conv, x, mask)
            # padding is not re-zeroed (docs/numerics.md s.4.9); only the gaps between levels are
            x = F.relu(_norm_btc(norm, x)) * keep.to(x.dtype)
        return x

    def _output(self, conv: MaskedConv1D, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The output conv in float32 (outside autocast): logits and offsets are not rounded to
        bf16/fp16 before scoring (docs/numerics.md s.4.7). ``(B, P, C) -> (B, P, K)``."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _masked_conv_btc(conv, x.float(), mask)


class ClsHead(_HeadTrunk):
    """Class logits (no background class). The output bias is the prior logit of
    ``prior_prob``; classes in ``empty_cls`` get the prior of 1e-6."""

    def __init__(self, input_dim: int, feat_dim: int, num_classes: int, *, prior_prob: float,
                 num_layers: int, kernel_size: int, with_ln: bool, empty_cls: Sequence[int]) -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.cls_head = MaskedConv1D(feat_dim, num_classes, kernel_size, bias=True)
        if prior_prob > 0:
            nn.init.constant_(self.cls_head.conv.bias, prior_bias(prior_prob))
        if len(empty_cls) > 0:
            with torch.no_grad():
                self.cls_head.conv.bias[list(empty_cls)] = prior_bias(EMPTY_CLS_PRIOR)

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        # feats: list of (B, C, T_l); masks: list of (B, 1, T_l) -> list of (B, K, T_l) float32
        pack = self._pack(feats, masks)
        if self.training:
            x = self._trunk(pack.x, pack.mask, pack.keep)
        else:
            # inference: the whole head in float32 even under autocast; the scores are ranked, and
            # bf16 rounding in this conv/LN chain cost 2.8 points of mAP on a young checkpoint
            # (docs/numerics.md s.4.7)
            with torch.autocast(device_type=pack.x.device.type, enabled=False):
                x = self._trunk(pack.x.float(), pack.mask, pack.keep)
        return pack.split(self._output(self.cls_head, x, pack.mask))


class RegHead(_HeadTrunk):
    """Left/right distances in units of the level stride: ``ReLU(Scale_l * conv(x))`` (or
    softplus, ``model.offset_activation``)."""

    def __init__(self, input_dim: int, feat_dim: int, num_levels: int, *, num_layers: int,
                 kernel_size: int, with_ln: bool, activation: str = "relu") -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        assert activation in ("relu", "softplus"), activation
        self.activation = F.relu if activation == "relu" else F.softplus
        self.scale = nn.ModuleList(Scale() for _ in range(num_levels))
        self.offset_head = MaskedConv1D(feat_dim, 2, kernel_size, bias=True)

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        # feats: list of (B, C, T_l); masks: list of (B, 1, T_l) -> list of (B, 2, T_l) float32
        assert len(feats) == len(self.scale)
        pack = self._pack(feats, masks)
        x = self._trunk(pack.x, pack.mask, pack.keep)
        y = self._output(self.offset_head, x, pack.mask)                 # (B, P, 2)
        # Scale_l per level: one multiply by the per-position scale (any value on the gaps)
        parts = []
        for i, (scale, n) in enumerate(zip(self.scale, pack.lengths)):
            if i > 0 and self.kernel_size // 2 > 0:
                parts.append(scale.scale.expand(self.kernel_size // 2))
            parts.append(scale.scale.expand(n))
        parts.append(self.scale[-1].scale.expand(y.shape[1] - pack.starts[-1] - pack.lengths[-1]))
        return pack.split(self.activation(y * torch.cat(parts).view(1, -1, 1)))
