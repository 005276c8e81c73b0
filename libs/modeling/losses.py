"""Training losses: sigmoid focal loss, centre-based 1-D DIoU, the loss normaliser EMA and the
batch loss of the detector (docs/numerics.md s.6).

Deliberate differences from the reference, both documented:
- ``LossNormalizer`` is an object with ``state_dict`` so a checkpoint can carry it (the reference
  keeps a plain float that resets on resume); under torch.distributed the positive count is summed
  over ranks before the update (the reference loses DataParallel replicas' updates).
- ``ctr_diou_loss_1d`` does not assert non-negative inputs (that forces a device sync and turns a
  NaN into an AssertionError); use ``per_video_nonfinite`` to locate bad outputs instead.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from libs.common.distributed import all_reduce_sum

__all__ = ["sigmoid_focal_loss", "ctr_diou_loss_1d", "LossNormalizer", "detection_losses",
           "per_video_nonfinite"]


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "sum") -> Tensor:
    """Focal loss on sigmoid probabilities (RetinaNet), computed in fp32.

    ``p = sigmoid(x)``, ``ce = BCEWithLogits(x, t)``, ``p_t = p t + (1 - p)(1 - t)``,
    ``loss = ce (1 - p_t)^gamma``, then ``*= alpha t + (1 - alpha)(1 - t)`` when ``alpha >= 0``.
    ``logits`` and ``targets`` have the same shape (targets may be soft).
    """
    logits = logits.float()
    targets = targets.float()
    p = torch.sigmoid(logits)
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def ctr_diou_loss_1d(pred: Tensor, target: Tensor, reduction: str = "sum", eps: float = 1e-8
                     ) -> Tensor:
    """Centre-based 1-D distance-IoU loss.

    ``pred`` and ``target`` are (M, 2) non-negative (left, right) distances from the same points.
    ``loss = 1 - I/U + (rho / C)^2`` with ``rho`` the centre offset and ``C`` the enclosing length.
    """
    pred = pred.float()
    target = target.float()
    lp, rp = pred[:, 0], pred[:, 1]                                   # (M,)
    lg, rg = target[:, 0], target[:, 1]                               # (M,)
    lkis = torch.min(lp, lg)
    rkis = torch.min(rp, rg)
    intsct = rkis + lkis
    union = (lp + rp) + (lg + rg) - intsct
    iou = intsct / union.clamp(min=eps)
    len_c = torch.max(lp, lg) + torch.max(rp, rg)
    rho = 0.5 * (rp - lp - rg + lg)
    loss = 1.0 - iou + torch.square(rho / len_c.clamp(min=eps))      # (M,)
    return _reduce(loss, reduction)


NumPos = Union[int, Tensor]


class LossNormalizer:
    """EMA of the number of positive points: ``N <- m N + (1 - m) max(num_pos, 1)``.

    Updated once per forward *before* the losses are divided by it. ``reduce_fn`` maps the local
    positive count to the global one (default: sum over torch.distributed ranks when a process
    group is initialised, otherwise the identity).
    """

    def __init__(self, init_value: float, momentum: float,
                 reduce_fn: Optional[Callable[[NumPos], NumPos]] = None) -> None:
        self.value = float(init_value)
        self.momentum = float(momentum)
        self.reduce_fn = reduce_fn

    def update(self, num_pos: NumPos) -> float:
        """Fold one batch's positive count into the EMA; returns the new value."""
        reduce_fn = self.reduce_fn if self.reduce_fn is not None else all_reduce_sum
        total = reduce_fn(num_pos)
        if isinstance(total, Tensor):
            total = total.item()
        # same python-float expression as the reference: m*N + (1-m)*max(n, 1)
        self.value = self.momentum * self.value + (1 - self.momentum) * max(total, 1)
        return self.value

    def __float__(self) -> float:
        return self.value

    def state_dict(self) -> Dict[str, float]:
        return {"value": self.value, "momentum": self.momentum}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.value = float(state["value"])
        self.momentum = float(state.get("momentum", self.momentum))


def detection_losses(cls_logits: Sequence[Tensor], offsets: Sequence[Tensor],
                     fpn_masks: Sequence[Tensor], cls_targets: Tensor, reg_targets: Tensor,
                     normalizer: LossNormalizer, loss_weight: float = 1.0,
                     label_smoothing: float = 0.0) -> Dict[str, Union[Tensor, int]]:
    """Classification + regression loss of one batch.

    Args:
        cls_logits: per level (B, T_l, K).  offsets: per level (B, T_l, 2), stride units.
        fpn_masks: per level (B, T_l) bool.
        cls_targets: (B, P, K), reg_targets: (B, P, 2) from ``assign_targets`` (P = sum T_l).
        normalizer: updated here (once) before use.
        loss_weight: weight of reg_loss; <= 0 balances it as ``cls.detach() / max(reg, 0.01)``.
        label_smoothing: targets become ``t (1 - ls) + ls / (K + 1)``.

    Returns:
        dict with ``cls_loss``, ``reg_loss``, ``final_loss`` (0-dim tensors) and ``num_pos`` (int,
        local positives of this batch).
    """
    num_classes = cls_targets.shape[-1]
    valid_mask = torch.cat(list(fpn_masks), dim=1)                          # (B, P)
    pos_mask = (cls_targets.sum(-1) > 0) & valid_mask                        # (B, P)
    pred_offsets = torch.cat(list(offsets), dim=1)[pos_mask]                # (M, 2)
    gt_offsets = reg_targets[pos_mask]                                      # (M, 2)
    num_pos_t = pos_mask.sum()
    num_pos = int(num_pos_t.item())
    norm = normalizer.update(num_pos_t)                                     # global count if DDP

    gt_target = cls_targets[valid_mask]                                      # (V, K)
    if label_smoothing > 0:
        gt_target = gt_target * (1 - label_smoothing)
        gt_target = gt_target + label_smoothing / (num_classes + 1)
    logits = torch.cat(list(cls_logits), dim=1)[valid_mask]                  # (V, K)
    cls_loss = sigmoid_focal_loss(logits, gt_target, reduction="sum")
    cls_loss = cls_loss / norm

    if num_pos == 0:
        reg_loss = 0 * pred_offsets.sum()
    else:
        reg_loss = ctr_diou_loss_1d(pred_offsets, gt_offsets, reduction="sum")
        reg_loss = reg_loss / norm

    if loss_weight > 0:
        weight: Union[float, Tensor] = loss_weight
    else:
        weight = cls_loss.detach() / max(reg_loss.item(), 0.01)
    final_loss = cls_loss + reg_loss * weight
    return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": final_loss,
            "num_pos": num_pos}


def per_video_nonfinite(cls_logits: Sequence[Tensor], offsets: Sequence[Tensor]) -> List[int]:
    """Indices of the videos whose logits or offsets (any level) hold NaN or +-inf."""
    bad = None
    for lvl in list(cls_logits) + list(offsets):                           # (B, T_l, C)
        lvl_bad = ~torch.isfinite(lvl).flatten(1).all(dim=1)                 # (B,)
        bad = lvl_bad if bad is None else bad | lvl_bad
    if bad is None:
        return []
    return [int(i) for i in torch.nonzero(bad).flatten().tolist()]
