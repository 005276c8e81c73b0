"""Helpers shared by the modeling tests."""
from __future__ import annotations

import torch


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its init (LN weights/biases included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def padding_mask(lengths, t: int) -> torch.Tensor:
    """``(B, 1, T)`` bool: True in the first ``lengths[b]`` cells of each video."""
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]
