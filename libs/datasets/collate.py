"""Batching: zero padding and validity masks (docs/architecture.md, collate.py contract)."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

from libs.common.errors import UserError


def padded_length(length: int, max_seq_len: int, max_div_factor: int) -> int:
    """Inference length of one item: ``max_seq_len`` if it fits, else the next multiple of
    ``max_div_factor``."""
    if length <= max_seq_len:
        return max_seq_len
    return -(-length // max_div_factor) * max_div_factor


def collate_batch(items: Sequence[Dict[str, Any]], max_seq_len: int, max_div_factor: int,
                  is_training: bool) -> Dict[str, Any]:
    """Items of :class:`PerceptionDataset` -> batch.

    ``feats (B, C, T)`` zero padded, ``masks (B, 1, T)`` bool (True = valid), and lists
    ``segments``, ``labels``, ``video_ids``, ``durations``, ``grids``, and ``annotated``
    ``(B, num_tasks)`` bool (None when the items have no flags). Training pads to exactly
    ``max_seq_len``; inference to the largest per-item padded length (:func:`padded_length`).
    """
    assert len(items) > 0, "empty batch"
    lengths = [int(it["feats"].shape[-1]) for it in items]
    if is_training:
        too_long = [(it["video_id"], n) for it, n in zip(items, lengths) if n > max_seq_len]
        if too_long:
            vid, n = too_long[0]
            raise UserError(f"training item of {n} cells (video '{vid}'): expected at most "
                            f"max_seq_len {max_seq_len} (enable force_upsampling or crop)")
        total = max_seq_len
    else:
        total = max(padded_length(n, max_seq_len, max_div_factor) for n in lengths)
    channels = {int(it["feats"].shape[0]) for it in items}
    assert len(channels) == 1, f"items with different channel counts {sorted(channels)}"
    first = items[0]["feats"]
    feats = first.new_zeros((len(items), channels.pop(), total))                  # (B, C, T)
    for b, it in enumerate(items):
        feats[b, :, :lengths[b]] = it["feats"]
    lens = torch.as_tensor(lengths)                                                 # (B,)
    masks = (torch.arange(total)[None, :] < lens[:, None])[:, None, :]             # (B, 1, T)
    return {
        "feats": feats,
        "masks": masks,
        "segments": [it["segments"] for it in items],
        "labels": [it["labels"] for it in items],
        "video_ids": [it["video_id"] for it in items],
        "durations": [float(it["duration"]) for it in items],
        "grids": [it["grid"] for it in items],
        "annotated": (torch.stack([it["annotated"] for it in items])                # (B, tasks)
                      if "annotated" in items[0] else None),
    }
