"""Candidate points per pyramid level (docs/numerics.md s.4.8)."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn


class PointGenerator(nn.Module):
    """Precomputed float32 rows ``[t, lo, hi, stride]`` per level, ``t = 0, s, 2s, ... < L_buf``.

    ``L_buf = max_seq_len * max_buffer_len_factor`` grid cells: the longest input the model can
    handle. ``t`` has no half-stride offset. Buffers are non-persistent (not in checkpoints).
    """

    def __init__(self, max_seq_len: int, strides: Sequence[int], regression_range: Sequence[Sequence[float]],
                 max_buffer_len_factor: float) -> None:
        super().__init__()
        assert len(strides) == len(regression_range)
        self.max_buffer_len = max_seq_len * max_buffer_len_factor
        self.strides = list(strides)
        self.num_levels = len(self.strides)
        for level, (stride, rng) in enumerate(zip(self.strides, regression_range)):
            t = torch.arange(0, self.max_buffer_len, stride, dtype=torch.float32)[:, None]   # (N, 1)
            lo_hi = torch.as_tensor(rng, dtype=torch.float32)[None].expand(t.shape[0], 2)
            s = torch.full_like(t, float(stride))
            self.register_buffer(f"points_{level}", torch.cat([t, lo_hi, s], dim=1), persistent=False)

    def buffer(self, level: int) -> torch.Tensor:
        """All precomputed rows ``(N_l, 4)`` of one level."""
        return getattr(self, f"points_{level}")

    def forward(self, lengths: Sequence[int]) -> List[torch.Tensor]:
        """The first ``T_l`` rows ``(T_l, 4)`` of each level for level lengths ``lengths``."""
        assert len(lengths) == self.num_levels
        out = []
        for level, length in enumerate(lengths):
            buf = self.buffer(level)
            if length > buf.shape[0]:
                raise ValueError(f"input too long: level {level} has {length} points but the buffer "
                                 f"holds {buf.shape[0]} (max_seq_len x max_buffer_len_factor = "
                                 f"{self.max_buffer_len:g} grid cells)")
            out.append(buf[:length])
        return out
