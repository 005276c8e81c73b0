"""Classification and regression heads shared across pyramid levels (docs/numerics.md s.4.7).

Each head has ``num_layers - 1`` blocks ``MaskedConv1D(k) -> LN -> ReLU`` (``head.{i}``,
``norm.{i}``) and an output ``MaskedConv1D``. Inputs are lists of ``(B, C, T_l)`` features and
``(B, 1, T_l)`` bool masks; outputs are lists of ``(B, C_out, T_l)``.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import MaskedConv1D, Scale, maybe_norm

EMPTY_CLS_PRIOR = 1e-6


def prior_bias(prob: float) -> float:
    """Logit bias ``-log((1 - p) / p)`` giving an initial sigmoid output of ``p``."""
    return -math.log((1.0 - prob) / prob)


class _HeadTrunk(nn.Module):
    def __init__(self, input_dim: int, feat_dim: int, num_layers: int, kernel_size: int,
                 with_ln: bool) -> None:
        super().__init__()
        self.head = nn.ModuleList()
        self.norm = nn.ModuleList()
        for i in range(num_layers - 1):
            self.head.append(MaskedConv1D(input_dim if i == 0 else feat_dim, feat_dim, kernel_size,
                                          bias=not with_ln))
            self.norm.append(maybe_norm(feat_dim, with_ln))

    def _trunk(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.head, self.norm):
            x, _ = conv(x, mask)
            x = F.relu(norm(x))                        # padding is not re-zeroed (docs/numerics.md s.4.9)
        return x


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
        # -> list of (B, K, T_l)
        return [self.cls_head(self._trunk(x, m), m)[0] for x, m in zip(feats, masks)]


class RegHead(_HeadTrunk):
    """Left/right distances in units of the level stride: ``ReLU(Scale_l * conv(x))``."""

    def __init__(self, input_dim: int, feat_dim: int, num_levels: int, *, num_layers: int,
                 kernel_size: int, with_ln: bool) -> None:
        super().__init__(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.scale = nn.ModuleList(Scale() for _ in range(num_levels))
        self.offset_head = MaskedConv1D(feat_dim, 2, kernel_size, bias=True)

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        # -> list of (B, 2, T_l)
        assert len(feats) == len(self.scale)
        return [F.relu(scale(self.offset_head(self._trunk(x, m), m)[0]))
                for x, m, scale in zip(feats, masks, self.scale)]
