"""Modality dropout: during training, zero whole modalities of a video's input features.

Each video of a batch drops each modality (its block of channels, ``derived.input_dims``)
independently with probability ``p``; a video that would lose every modality keeps them all.
The validity mask is unchanged (the video is as long as before, it just has no such features).
Off at evaluation (the detector applies it only in training mode), and without parameters, so
it changes no checkpoint.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ModalityDropout(nn.Module):
    def __init__(self, input_dims: Sequence[int], p: float) -> None:
        super().__init__()
        assert 0.0 <= p <= 1.0, p
        self.input_dims = [int(d) for d in input_dims]
        self.p = float(p)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats (B, C, T)`` with ``C = sum(input_dims)`` -> the same shape, some blocks zero."""
        if self.p <= 0 or len(self.input_dims) < 2:
            return feats
        assert feats.shape[1] == sum(self.input_dims), (feats.shape, self.input_dims)
        num_videos, num_mods = feats.shape[0], len(self.input_dims)
        keep = torch.rand(num_videos, num_mods, device=feats.device) >= self.p      # (B, M)
        keep = keep | ~keep.any(dim=1, keepdim=True)             # never drop every modality
        widths = torch.as_tensor(self.input_dims, device=feats.device)
        channel_keep = keep.repeat_interleave(widths, dim=1)                        # (B, C)
        return feats * channel_keep[:, :, None].to(feats.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, input_dims={self.input_dims}"
