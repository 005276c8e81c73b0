"""Training truncation: a random window of the grid and the events that stay mostly inside it.

Follows the original ``data_utils.truncate_feats`` (docs/numerics.md s.3.1), with
all random windows drawn up front and scored at once (vectorised over windows and events).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

FeatsT = TypeVar("FeatsT", np.ndarray, torch.Tensor)

MAX_TRIALS = 200


def crop_length(t: int, max_seq_len: int, crop_ratio: Optional[Sequence[float]],
                rng: np.random.Generator) -> int:
    """Window length: ``randint[max(round(lo*T), 1), min(round(hi*T), T)]`` if ``T <= max_seq_len``
    (``T`` itself, i.e. no crop, without ``crop_ratio``), else ``max_seq_len``."""
    if t > max_seq_len:
        return max_seq_len
    if crop_ratio is None:
        return t
    lo = max(round(crop_ratio[0] * t), 1)
    hi = min(round(crop_ratio[1] * t), t)
    lo = min(lo, hi)
    return int(rng.integers(lo, hi + 1))


def truncate_feats(feats: FeatsT, segments: np.ndarray, labels: np.ndarray, max_seq_len: int,
                   trunc_thresh: float, crop_ratio: Optional[Sequence[float]], offset: float,
                   rng: np.random.Generator) -> Tuple[FeatsT, np.ndarray, np.ndarray]:
    """Crop ``feats (C, T)`` to a random window ``[st, st + L)``; returns ``(feats (C, L),
    segments (M, 2), labels (M,))`` with grid-cell segments shifted by ``-st``.

    Up to 200 windows ``st ~ U{0..T-L}`` are tried; each event is clipped to
    ``[st - offset, st + L + offset]`` and kept if the clipped/original length ratio is
    ``>= trunc_thresh``. The first window keeping at least one event wins, else the last one.
    Unchanged inputs are returned when ``L == T``.
    """
    t = int(feats.shape[-1])
    length = crop_length(t, max_seq_len, crop_ratio, rng)
    if length == t:
        return feats, segments, labels
    starts = rng.integers(0, t - length + 1, size=MAX_TRIALS)          # (K,)
    segs = np.asarray(segments)
    if segs.shape[0] == 0:
        st = int(starts[-1])
        keep = np.zeros(0, dtype=bool)
        left = right = segs[:, 0]
    else:
        win = starts.astype(segs.dtype)[:, None]                        # (K, 1)
        left_all = np.maximum(win - offset, segs[None, :, 0])          # (K, N)
        right_all = np.minimum(win + length + offset, segs[None, :, 1])  # (K, N)
        inter = np.clip(right_all - left_all, 0.0, None)                 # (K, N)
        area = np.abs(segs[:, 1] - segs[:, 0])[None, :]                  # (1, N)
        with np.errstate(divide="ignore", invalid="ignore"):
            keep_all = inter / area >= trunc_thresh                      # (K, N)
        ok = keep_all.any(axis=1)                                        # (K,)
        k = int(np.argmax(ok)) if ok.any() else MAX_TRIALS - 1
        st = int(starts[k])
        keep, left, right = keep_all[k], left_all[k], right_all[k]
    out_segs = (np.stack([left[keep], right[keep]], axis=1) - st).astype(segs.dtype, copy=False)
    out_labels = np.asarray(labels)[keep]
    out_feats = feats[..., st:st + length]
    out_feats = out_feats.clone() if isinstance(out_feats, torch.Tensor) else out_feats.copy()
    return out_feats, out_segs.reshape(-1, 2), out_labels
