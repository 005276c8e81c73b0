"""Basic layers of the ActionFormer network (docs/numerics.md s.4.1, 4.2, 4.4, 4.7).

All sequence tensors are ``(B, C, T)`` float; masks are ``(B, 1, T)`` bool, True = valid.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn


class MaskedConv1D(nn.Module):
    """``Conv1d`` with odd kernel and ``padding = kernel_size // 2`` whose *output* is masked.

    The input is not masked (padding values leak into the boundary outputs, docs/numerics.md s.4.9). With stride
    ``s > 1`` the output mask keeps input positions ``0, s, 2s, ...`` (nearest resampling); the
    input length must be divisible by ``s``. A bias, if any, is initialised to 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        assert kernel_size % 2 == 1, "MaskedConv1D needs an odd kernel"
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, groups=groups, bias=bias)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # x: (B, C_in, T); mask: (B, 1, T) bool
        assert x.shape[-1] % self.stride == 0
        out = self.conv(x)                                    # (B, C_out, T / s)
        out_mask = mask[:, :, ::self.stride] if self.stride > 1 else mask
        out = out * out_mask.detach().to(out.dtype)
        return out, out_mask.bool()


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(B, C, T)`` tensor, affine params of shape ``(1, C, 1)``.

    Op order (docs/numerics.md s.4.2): mean, subtract, mean of squares (biased), sqrt(var + eps), divide, then
    ``* weight + bias``. An all-zero column maps to ``bias``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(1, num_channels, 1))
            self.bias = nn.Parameter(torch.zeros(1, num_channels, 1))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T)
        assert x.dim() == 3 and x.shape[1] == self.num_channels
        mu = torch.mean(x, dim=1, keepdim=True)               # (B, 1, T)
        res = x - mu
        var = torch.mean(res ** 2, dim=1, keepdim=True)       # (B, 1, T)
        out = res / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight
            out = out + self.bias
        return out


class Scale(nn.Module):
    """A learnable fp32 0-dim scalar (init 1.0) multiplying its input (per-level regression scale)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init_value, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: keep with prob ``q = 1 - p`` (scaled by ``1/q``), else zero.

    The keep decision is ``floor(q + U[0, 1))`` drawn with ``torch.rand`` of shape ``(B, 1, ...)``.
    Identity when ``drop_prob == 0`` or not training.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    keep = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    keep.floor_()                                             # (B, 1, 1): 0 or 1
    return x.div(keep_prob) * keep


class AffineDropPath(nn.Module):
    """LayerScale then stochastic depth: ``drop_path(scale * x)``, ``scale`` (1, C, 1) init 1e-4.

    ``stochastic_depth = False`` keeps the LayerScale factor but never drops samples (used to run a
    deterministic training-mode forward pass).
    """

    def __init__(self, num_channels: int, drop_prob: float = 0.0, init_scale: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_scale * torch.ones((1, num_channels, 1)))
        self.drop_prob = drop_prob
        self.stochastic_depth = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T)
        p = self.drop_prob if self.stochastic_depth else 0.0
        return drop_path(self.scale * x, p, self.training)


def maybe_norm(num_channels: int, with_ln: bool) -> nn.Module:
    """``ChannelLayerNorm(num_channels)`` or ``nn.Identity()``."""
    return ChannelLayerNorm(num_channels) if with_ln else nn.Identity()


__all__ = ["MaskedConv1D", "ChannelLayerNorm", "Scale", "drop_path", "AffineDropPath", "maybe_norm"]
