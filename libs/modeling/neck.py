"""Necks between backbone levels and heads (docs/numerics.md s.4.6) and their registry.

A registered neck is an ``nn.Module`` class built from ``(in_channels: list[int] per backbone
level, out_channels: int, scale_factor: int, start_level: int, with_ln: bool)``; its
``forward(feats list[(B, C_l, T_l)], masks list[(B, 1, T_l)])`` returns the lists for levels
``start_level..`` and it exposes ``out_channels``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from libs.common.registry import Registry

from .layers import MaskedConv1D, maybe_norm

NECKS = Registry("neck", "model.neck", requires=("out_channels",))
register_neck = NECKS.register


def build_neck(name: str, **kwargs) -> nn.Module:
    """Instantiate the neck registered as ``name`` (keywords: see the module docstring)."""
    return NECKS.build(name, **kwargs)


@register_neck("identity")
class IdentityNeck(nn.Module):
    """``LN_l(feat_l)`` per level (``fpn_norms.{l}``), masks passed through.

    Padded positions are not re-masked after the LN, so they hold the LN bias (docs/numerics.md s.4.9).
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int, scale_factor: int,
                 start_level: int, with_ln: bool) -> None:
        super().__init__()
        assert all(c == out_channels for c in in_channels[start_level:]), \
            "the identity neck keeps the width (model.fpn_dim is checked at config load)"
        self.start_level = start_level
        self.out_channels = out_channels
        self.fpn_norms = nn.ModuleList(maybe_norm(out_channels, with_ln)
                                       for _ in range(start_level, len(in_channels)))

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        assert len(feats) == len(self.fpn_norms) + self.start_level
        out_feats = [norm(feats[i + self.start_level]) for i, norm in enumerate(self.fpn_norms)]
        return out_feats, list(masks[self.start_level:])


@register_neck("fpn")
class FPN1D(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down nearest upsampling, depthwise k3 conv, LN."""

    def __init__(self, *, in_channels: Sequence[int], out_channels: int, scale_factor: int,
                 start_level: int, with_ln: bool) -> None:
        super().__init__()
        self.start_level = start_level
        self.scale_factor = scale_factor
        self.out_channels = out_channels
        self.l_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        self.fpn_norms = nn.ModuleList()
        for c_in in in_channels[start_level:]:
            self.l_convs.append(MaskedConv1D(c_in, out_channels, 1, bias=not with_ln))
            self.fpn_convs.append(MaskedConv1D(out_channels, out_channels, 3, groups=out_channels,
                                               bias=not with_ln))
            self.fpn_norms.append(maybe_norm(out_channels, with_ln))

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        assert len(feats) == len(self.l_convs) + self.start_level
        masks = list(masks[self.start_level:])
        lat = [conv(feats[i + self.start_level], masks[i])[0] for i, conv in enumerate(self.l_convs)]
        for i in range(len(lat) - 1, 0, -1):          # top-down, using the updated upper level
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=self.scale_factor, mode="nearest")
        out = [norm(conv(x, m)[0]) for x, m, conv, norm in zip(lat, masks, self.fpn_convs, self.fpn_norms)]
        return out, masks
