"""Label assignment: ground-truth segments -> per-point classification and regression targets.

Semantics follow the reference ``label_points_single_video`` (docs/numerics.md s.5), applied
to a whole batch at once by padding the ground-truth lists:

- a point ``[t, lo, hi, s]`` is *inside* GT ``[a, b]`` when it lies strictly inside the centre
  region ``(max(c - s*r, a), min(c + s*r, b))`` with ``c = 0.5*(a + b)``
  (``center_sample='radius'``) or strictly inside ``(a, b)`` (``'none'``);
- it is *in range* when ``lo <= max(t - a, b - t) <= hi`` (both inclusive, grid cells);
- among the GTs passing both tests the shortest wins (first index on exact ties); every passing GT
  whose length is ``<= min + 1e-3`` contributes its class (multi-label, clamped to [0, 1]);
- the regression target is ``(t - a, b - t) / s`` of the winning GT. A point with no match gets
  the distances to GT 0 (the reference's argmin over an all-inf row returns 0); those values are
  never used by the losses (only positives are regressed) but are kept for parity;
- a video with no GT gets all-zero targets.

Padded GT slots get length +inf, so they never match and never win a tie.
Float operations are done in the reference's order so targets match it bit for bit on CPU.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["assign_targets"]

# multi-label tolerance on GT lengths (grid cells), as in the reference
_LEN_TOL = 1e-3


def _pad_gt(points: Tensor, segments: Sequence[Tensor], labels: Sequence[Tensor]
            ) -> Tuple[Tensor, Tensor, Tensor]:
    """Pad the per-video GT lists: segs (B, N, 2), labels (B, N) int64, valid (B, N) bool."""
    device, dtype = points.device, points.dtype
    segs = [s.to(device=device, dtype=dtype).reshape(-1, 2) for s in segments]
    labs = [l.to(device=device, dtype=torch.long).reshape(-1) for l in labels]
    counts = torch.tensor([s.shape[0] for s in segs], device=device)           # (B,)
    gt_segs = pad_sequence(segs, batch_first=True)                               # (B, N, 2)
    gt_labels = pad_sequence(labs, batch_first=True)                             # (B, N)
    n_max = gt_segs.shape[1]
    gt_valid = torch.arange(n_max, device=device)[None, :] < counts[:, None]    # (B, N)
    return gt_segs, gt_labels, gt_valid


def assign_targets(points: Tensor, segments: List[Tensor], labels: List[Tensor], num_classes: int,
                   center_sample: str = "radius", center_sample_radius: float = 1.5
                   ) -> Tuple[Tensor, Tensor]:
    """Assign targets to every point of every video of a batch.

    Args:
        points: (P, 4) rows ``[t, lo, hi, stride]``, all pyramid levels concatenated level-major.
        segments: B tensors (N_i, 2), GT segments in grid cells (N_i may be 0).
        labels: B tensors (N_i,), class ids in [0, num_classes).
        num_classes: K.
        center_sample: 'radius' (centre sampling) or 'none'.
        center_sample_radius: radius in units of the level stride.

    Returns:
        cls_targets (B, P, K) float in {0, 1}; reg_targets (B, P, 2) float, distances
        (left, right) in units of the point's stride.
    """
    if center_sample not in ("radius", "none"):
        raise ValueError(f"center_sample must be 'radius' or 'none', got {center_sample!r}")
    if len(segments) != len(labels):
        raise ValueError("segments and labels must have one entry per video")
    num_videos, num_pts = len(segments), points.shape[0]
    device, dtype = points.device, points.dtype
    cls_targets = points.new_zeros(num_videos, num_pts, num_classes)             # (B, P, K)
    reg_targets = points.new_zeros(num_videos, num_pts, 2)                       # (B, P, 2)
    if num_videos == 0:
        return cls_targets, reg_targets
    gt_segs, gt_labels, gt_valid = _pad_gt(points, segments, labels)
    num_gts = gt_segs.shape[1]
    if num_gts == 0:
        return cls_targets, reg_targets

    pt_t = points[None, :, 0, None]                                              # (1, P, 1)
    pt_lo = points[None, :, 1, None]
    pt_hi = points[None, :, 2, None]
    pt_s = points[None, :, 3, None]
    gt_a = gt_segs[:, None, :, 0]                                                # (B, 1, N)
    gt_b = gt_segs[:, None, :, 1]                                                # (B, 1, N)

    left = pt_t - gt_a                                                           # (B, P, N)
    right = gt_b - pt_t                                                          # (B, P, N)
    if center_sample == "radius":
        center = 0.5 * (gt_a + gt_b)                                             # (B, 1, N)
        t_mins = center - pt_s * center_sample_radius                            # (B, P, N)
        t_maxs = center + pt_s * center_sample_radius
        cb_left = pt_t - torch.maximum(t_mins, gt_a)
        cb_right = torch.minimum(t_maxs, gt_b) - pt_t
        inside = torch.minimum(cb_left, cb_right) > 0                            # strict
    else:
        inside = torch.minimum(left, right) > 0                                  # strict
    max_dist = torch.maximum(left, right)                                        # (B, P, N)
    in_range = (max_dist >= pt_lo) & (max_dist <= pt_hi)                         # inclusive

    lens = (gt_segs[..., 1] - gt_segs[..., 0])[:, None, :]                       # (B, 1, N)
    ok = inside & in_range & gt_valid[:, None, :]                                # (B, P, N)
    inf = torch.tensor(float("inf"), device=device, dtype=dtype)
    lens = torch.where(ok, lens, inf)                                            # (B, P, N)
    min_len = lens.min(dim=-1, keepdim=True).values                              # (B, P, 1)
    # first index attaining the minimum (0 when the whole row is +inf), independent of how the
    # backend breaks ties in min/argmin
    gt_idx = torch.arange(num_gts, device=device)                                # (N,)
    min_idx = torch.where(lens == min_len, gt_idx, num_gts).min(dim=-1).values   # (B, P)

    multi = (lens <= min_len + _LEN_TOL) & (lens < inf)                          # (B, P, N)
    one_hot = torch.nn.functional.one_hot(gt_labels, num_classes)                 # (B, N, K)
    one_hot = (one_hot * gt_valid[..., None]).to(dtype)                          # (B, N, K)
    cls_targets = torch.bmm(multi.to(dtype), one_hot).clamp_(0.0, 1.0)           # (B, P, K)

    gather_idx = min_idx[..., None]                                              # (B, P, 1)
    reg_left = torch.gather(left, 2, gather_idx)                                 # (B, P, 1)
    reg_right = torch.gather(right, 2, gather_idx)
    reg_targets = torch.cat((reg_left, reg_right), dim=-1) / points[None, :, 3, None]  # (B, P, 2)
    has_gt = gt_valid.any(dim=1)                                                 # (B,)
    reg_targets = torch.where(has_gt[:, None, None], reg_targets, 0.0)
    return cls_targets, reg_targets
