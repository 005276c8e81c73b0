"""Seconds <-> grid cells (docs/numerics.md s.2). The only place where this arithmetic lives.

``grid = seconds * fps / feat_stride - 0.5 * num_frames / feat_stride`` and the inverse
``seconds = (grid * feat_stride + 0.5 * num_frames) / fps`` (the reference's float order).
Both work on floats, numpy arrays and torch tensors and keep the input's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from libs.common.errors import UserError
from libs.config.schema import DatasetConfig

ArrayT = TypeVar("ArrayT", float, np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class TimeGrid:
    """One video's grid: ``fps`` (feature clock), ``feat_stride`` and ``num_frames`` (frames per
    cell / per cell's window), ``duration`` (seconds, for clipping)."""
    fps: float
    feat_stride: float
    num_frames: float
    duration: float

    @property
    def offset(self) -> float:
        """Grid position of time 0 is ``-offset``; also the crop window's margin in cells."""
        return 0.5 * self.num_frames / self.feat_stride

    def to_grid(self, seconds: ArrayT) -> ArrayT:
        """Seconds -> grid cells (cell i is centred at ``(i + 0.5) * feat_stride / fps`` s)."""
        return seconds * self.fps / self.feat_stride - 0.5 * self.num_frames / self.feat_stride

    def to_seconds(self, grid: ArrayT) -> ArrayT:
        """Grid cells -> seconds, the exact inverse of :meth:`to_grid` (reference float order)."""
        return (grid * self.feat_stride + 0.5 * self.num_frames) / self.fps

    def clip_seconds(self, x: ArrayT) -> ArrayT:
        """Clip seconds to ``[0, duration]``."""
        if isinstance(x, torch.Tensor):
            return x.clamp(min=0.0, max=self.duration)
        if isinstance(x, np.ndarray):
            return np.clip(x, 0.0, self.duration).astype(x.dtype, copy=False)
        return min(max(float(x), 0.0), self.duration)


def make_time_grid(dataset_cfg: DatasetConfig, t_primary: int, duration: float) -> TimeGrid:
    """The grid of a video with ``t_primary`` primary rows and ``duration`` seconds.

    ``stride`` mode (the original, docs/numerics.md s.2.1): with force_upsampling
    ``stride = ((T-1)*feat_stride + num_frames)/max_seq_len`` and ``nframes = stride`` (case 2),
    else ``stride = feat_stride``, ``nframes = num_frames`` (case 1); ``fps = dataset.fps``.
    ``duration`` mode: ``L = max_seq_len if force_upsampling else T``, ``fps = L / duration``,
    ``feat_stride = num_frames = 1`` (so ``grid = seconds / duration * L - 0.5``).
    """
    assert t_primary >= 1, t_primary
    mode, force, max_seq_len = dataset_cfg.time_grid, dataset_cfg.force_upsampling, dataset_cfg.max_seq_len
    if mode == "duration":
        if not duration > 0:
            raise UserError(f"video duration is {duration} s (time_grid 'duration'): expected > 0")
        length = max_seq_len if force else int(t_primary)
        return TimeGrid(fps=length / float(duration), feat_stride=1.0, num_frames=1.0,
                        duration=float(duration))
    assert mode == "stride" and dataset_cfg.fps is not None, "checked at config load"
    fps, feat_stride, num_frames = dataset_cfg.fps, dataset_cfg.feat_stride, dataset_cfg.num_frames
    if force:
        stride = ((t_primary - 1) * feat_stride + num_frames) / max_seq_len
        return TimeGrid(fps=float(fps), feat_stride=stride, num_frames=stride, duration=float(duration))
    return TimeGrid(fps=float(fps), feat_stride=feat_stride, num_frames=num_frames,
                    duration=float(duration))
