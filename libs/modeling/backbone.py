"""ActionFormer backbones (docs/numerics.md s.4.3) and their registry.

A registered backbone is an ``nn.Module`` class whose constructor takes the keyword arguments of
:func:`build_backbone` and whose ``forward(x (B, C, T), mask (B, 1, T) bool)`` returns two lists,
features ``(B, out_channels, T / strides[l])`` and masks ``(B, 1, T / strides[l])``, one entry per
pyramid level. It exposes ``out_channels: int``, ``strides: list[int]`` and
``max_div_factor: int`` (inputs must have a length divisible by it).

- ``single_stream`` (the original ``convTransformer``): input channels = ``sum(input_groups)``.
- ``fusion`` (the original ``convTransformerMM1``): the input is split into ``input_groups``
  groups, each projected by its own 1x1 ``MaskedConv1D`` with bias (``proj.{i}``) to
  ``group_proj_dims[i]`` channels, the projections are concatenated and the rest is the
  single-stream trunk at width ``embd_dim`` (the fused width).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from libs.common.registry import Registry
from libs.config.checks import level_div_factors

from .blocks import TransformerBlock
from .layers import MaskedConv1D, maybe_norm

BACKBONES = Registry("backbone", "model.backbone", requires=("out_channels", "strides"))
register_backbone = BACKBONES.register


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Instantiate the backbone registered as ``name`` with keyword arguments ``kwargs``.

    Accepted keywords: ``input_groups, group_proj_dims, embd_dim, n_head, max_seq_len, backbone_arch,
    scale_factor, n_mha_win_size, embd_kernel_size, embd_with_ln, use_abs_pe, use_rel_pe,
    dropout, droppath``.
    """
    return BACKBONES.build(name, **kwargs)


def sinusoid_table(length: int, channels: int) -> torch.Tensor:
    """Absolute PE ``(1, C, L)`` float32: ``sin/cos(t / 10000^(2 floor(c/2) / C)) / sqrt(C)``.

    Built in float64 (even c: sin, odd c: cos), cast to float32, then divided by ``sqrt(C)``.
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]                 # (L, 1)
    c = torch.arange(channels, dtype=torch.float64)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                            2.0 * torch.floor(c / 2) / channels)              # (L, C)
    table = torch.where(torch.arange(channels) % 2 == 0, torch.sin(angle), torch.cos(angle))
    table = table.to(torch.float32).t().unsqueeze(0)                         # (1, C, L)
    return table / (channels ** 0.5)


class _ConvTransformer(nn.Module):
    """Shared trunk: [projection] -> embedding convs -> abs PE -> stem -> branch."""

    def __init__(self, *, embd_in: int, proj: Optional[Sequence[Tuple[int, int]]], embd_dim: int,
                 n_head: int, max_seq_len: int, backbone_arch: Sequence[int],
                 scale_factor: int, n_mha_win_size: Sequence[int],
                 embd_kernel_size: int, embd_with_ln: bool, use_abs_pe: bool,
                 use_rel_pe: bool, dropout: float, droppath: float) -> None:
        super().__init__()
        n_embd_layers, n_stem, n_branch = backbone_arch
        self.max_seq_len = max_seq_len
        self.use_abs_pe = use_abs_pe
        self.out_channels = embd_dim
        self.strides = [scale_factor ** i for i in range(n_branch + 1)]
        self.windows = list(n_mha_win_size)
        assert len(self.windows) == n_branch + 1, "one attention window per pyramid level"
        self.max_div_factor = max(level_div_factors(self.strides, self.windows))
        self.in_groups: Optional[List[int]] = None
        if proj is not None:
            self.in_groups = [c_in for c_in, _ in proj]
            self.proj = nn.ModuleList(MaskedConv1D(c_in, c_out, 1, bias=True) for c_in, c_out in proj)
        self.embd = nn.ModuleList()
        self.embd_norm = nn.ModuleList()
        for i in range(n_embd_layers):
            self.embd.append(MaskedConv1D(embd_in if i == 0 else embd_dim, embd_dim, embd_kernel_size,
                                          bias=not embd_with_ln))
            self.embd_norm.append(maybe_norm(embd_dim, embd_with_ln))
        if use_abs_pe:
            self.register_buffer("pos_embd", sinusoid_table(max_seq_len, embd_dim), persistent=False)
        block = dict(dropout=dropout, droppath=droppath, use_rel_pe=use_rel_pe)
        self.stem = nn.ModuleList(
            TransformerBlock(embd_dim, n_head, window_size=self.windows[0], stride=1, **block)
            for _ in range(n_stem))
        self.branch = nn.ModuleList(
            TransformerBlock(embd_dim, n_head, window_size=self.windows[1 + i], stride=scale_factor,
                             **block)
            for i in range(n_branch))
        for m in self.modules():                      # docs/numerics.md s.4.3 step 6: every backbone bias is 0
            if isinstance(m, (nn.Conv1d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def position_embedding(self, length: int) -> torch.Tensor:
        """PE ``(1, C, length)``: the table in training, stretched if ``length >= max_seq_len`` in eval."""
        if self.training:
            assert length <= self.max_seq_len, "training inputs must fit max_seq_len"
            return self.pos_embd[:, :, :length]
        pe = self.pos_embd
        if length >= self.max_seq_len:
            pe = F.interpolate(pe, size=length, mode="linear", align_corners=False)
        return pe[:, :, :length]

    def forward(self, x: torch.Tensor, mask: torch.Tensor
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        # x: (B, C_in, T); mask: (B, 1, T) bool
        if self.in_groups is not None:
            groups = torch.split(x, self.in_groups, dim=1)
            x = torch.cat([p(g, mask)[0] for p, g in zip(self.proj, groups)], dim=1)  # (B, sum e_i, T)
        for conv, norm in zip(self.embd, self.embd_norm):
            x, mask = conv(x, mask)
            x = F.relu(norm(x))                       # padded positions become relu(LN bias) (docs/numerics.md s.4.9)
        if self.use_abs_pe:
            x = x + self.position_embedding(x.shape[-1]) * mask.to(x.dtype)
        for blk in self.stem:
            x, mask = blk(x, mask)
        feats, masks = [x], [mask]
        for blk in self.branch:
            x, mask = blk(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks


@register_backbone("single_stream")
class SingleStreamBackbone(_ConvTransformer):
    """The original ``convTransformer`` on the concatenated input (``sum(input_groups)``
    channels); ``group_proj_dims`` must be None."""

    def __init__(self, *, input_groups: Sequence[int], group_proj_dims: Optional[Sequence[int]],
                 **trunk) -> None:
        assert group_proj_dims is None, "single_stream backbone takes no projections"
        super().__init__(embd_in=int(sum(input_groups)), proj=None, **trunk)


@register_backbone("fusion")
class FusionBackbone(_ConvTransformer):
    """The original ``convTransformerMM1``: per-group 1x1 projections, concat, then the trunk.

    ``group_proj_dims`` (one per input group) are the projection widths; ``embd_dim`` is the
    fused width produced by the first embedding conv.
    """

    def __init__(self, *, input_groups: Sequence[int], group_proj_dims: Sequence[int],
                 **trunk) -> None:
        assert len(group_proj_dims) == len(input_groups), "one projection width per input group"
        super().__init__(embd_in=int(sum(group_proj_dims)),
                         proj=list(zip(input_groups, group_proj_dims)), **trunk)


__all__ = ["BACKBONES", "register_backbone", "build_backbone", "sinusoid_table",
           "SingleStreamBackbone", "FusionBackbone"]
