"""Inference decoding: per-level head outputs -> candidate segments per video (docs/numerics.md s.7.1).

For each pyramid level and each video:
  prob = sigmoid(logits) * mask, flattened as index = t_idx * K + k;
  keep prob > pre_nms_thresh (strict); sort the kept probabilities descending and keep the first
  pre_nms_topk (top-k is PER LEVEL); point = idx // K, class = idx % K;
  segment = [t - off_left * s, t + off_right * s] (grid cells); keep length > duration_thresh
  (strict). Levels are concatenated in order 0..L-1.

Tie order: the reference's device sort leaves the order of equal probabilities undefined. Here the
sort is *stable*, so equal probabilities keep ascending flat index order (earlier point first, then
lower class). Every video is sorted independently, so a batch gives exactly the candidates of
batch-size-1 calls.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor

__all__ = ["decode_candidates"]


def _decode_level(points: Tensor, cls_logits: Tensor, offsets: Tensor, fpn_mask: Tensor,
                  pre_nms_thresh: float, pre_nms_topk: int, duration_thresh: float):
    """One level, whole batch. Returns segs (B, k, 2), scores (B, k), labels (B, k), keep (B, k)."""
    num_videos, num_pts, num_classes = cls_logits.shape
    prob = (cls_logits.sigmoid() * fpn_mask[..., None]).flatten(1)              # (B, T*K)
    above = prob > pre_nms_thresh                                               # (B, T*K)
    # rejected entries sort after every kept one (kept > thresh >= 0 > -1)
    ranked = torch.where(above, prob, torch.full_like(prob, -1.0))
    sorted_prob, order = torch.sort(ranked, dim=1, descending=True, stable=True)
    k = min(pre_nms_topk, num_pts * num_classes)
    scores = sorted_prob[:, :k]                                                 # (B, k)
    flat_idx = order[:, :k]                                                     # (B, k)
    keep = torch.gather(above, 1, flat_idx)                                     # (B, k)
    pt_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")            # (B, k)
    labels = torch.fmod(flat_idx, num_classes)                                  # (B, k)
    off = torch.gather(offsets, 1, pt_idx[..., None].expand(-1, -1, 2))         # (B, k, 2)
    pts = points[pt_idx]                                                        # (B, k, 4)
    seg_left = pts[..., 0] - off[..., 0] * pts[..., 3]                          # (B, k)
    seg_right = pts[..., 0] + off[..., 1] * pts[..., 3]                         # (B, k)
    segs = torch.stack((seg_left, seg_right), dim=-1)                           # (B, k, 2)
    keep = keep & ((seg_right - seg_left) > duration_thresh)                    # strict
    return segs, scores, labels, keep


def decode_candidates(points: Sequence[Tensor], cls_logits: Sequence[Tensor],
                      offsets: Sequence[Tensor], fpn_masks: Sequence[Tensor],
                      pre_nms_thresh: float, pre_nms_topk: int, duration_thresh: float
                      ) -> List[Dict[str, Tensor]]:
    """Decode the candidates of every video of a batch.

    Args:
        points: per level (T_l, 4) rows ``[t, lo, hi, stride]``.
        cls_logits: per level (B, T_l, K).  offsets: per level (B, T_l, 2), stride units.
        fpn_masks: per level (B, T_l) bool.
        pre_nms_thresh: keep probabilities strictly above this.
        pre_nms_topk: per level, keep at most this many candidates.
        duration_thresh: keep segments strictly longer than this (grid cells).

    Returns:
        One dict per video: ``segments`` (N, 2) float grid cells, ``scores`` (N,),
        ``labels`` (N,) int64; levels in order, each level by descending score (stable).
    """
    if not (len(points) == len(cls_logits) == len(offsets) == len(fpn_masks)):
        raise ValueError("points, cls_logits, offsets and fpn_masks need one entry per level")
    if len(cls_logits) == 0:
        return []
    per_level = [_decode_level(p, c, o, m, pre_nms_thresh, pre_nms_topk, duration_thresh)
                 for p, c, o, m in zip(points, cls_logits, offsets, fpn_masks)]
    segs = torch.cat([lv[0] for lv in per_level], dim=1)                        # (B, C, 2)
    scores = torch.cat([lv[1] for lv in per_level], dim=1)                      # (B, C)
    labels = torch.cat([lv[2] for lv in per_level], dim=1)                      # (B, C)
    keep = torch.cat([lv[3] for lv in per_level], dim=1)                        # (B, C)
    results = []
    for b in range(segs.shape[0]):                            # the output is a list per video
        kb = keep[b]
        results.append({"segments": segs[b][kb], "scores": scores[b][kb],
                        "labels": labels[b][kb].to(torch.int64)})
    return results
