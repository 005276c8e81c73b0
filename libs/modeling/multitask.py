"""Several tasks in one model: per-task views of the head outputs, targets and losses.

The detector's outputs hold every task side by side (``libs/modeling/detector.py``); ground truth
uses the joint label space (``libs/config/tasks.py``). Per task, :func:`task_losses` picks the
task's events, assigns targets with the task's own classes (``assign_targets``), and computes the
focal + DIoU losses of the task's logits and regression outputs with the task's own loss
normaliser; videos without the task's annotation (``dataset.allow_missing_task``) are left out of
that task's loss entirely. The total is ``sum_t w_t * final_loss_t`` (``train_cfg.task_loss_weight``).
For a task with no events in a batch the result equals the single-task loss of that batch.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from libs.config.schema import TrainCfgConfig
from libs.config.tasks import TaskLayout

from .assign import assign_targets
from .losses import LossNormalizer, detection_losses


def task_head_outputs(outputs: dict, layout: TaskLayout, reg_per_task: bool
                      ) -> List[Tuple[List[Tensor], List[Tensor]]]:
    """Per task ``(cls_logits, offsets)``: lists per level of ``(B, T_l, K_t)`` and
    ``(B, T_l, 2)`` (views of the joint outputs)."""
    out = []
    for i, _, lo, n in layout:
        r = 2 * i if reg_per_task else 0
        out.append(([x[..., lo:lo + n] for x in outputs["cls_logits"]],
                    [x[..., r:r + 2] for x in outputs["offsets"]]))
    return out


def task_events(segments: Sequence[Tensor], labels: Sequence[Tensor], lo: int, hi: int
                ) -> Tuple[List[Tensor], List[Tensor]]:
    """Per video, the events whose joint label lies in ``[lo, hi)``, labels made task-local."""
    segs, labs = [], []
    for s, lab in zip(segments, labels):
        keep = (lab >= lo) & (lab < hi)
        segs.append(s[keep])
        labs.append(lab[keep] - lo)
    return segs, labs


class TaskNormalizers:
    """One :class:`LossNormalizer` per task. ``state_dict``: ``value`` and ``momentum`` lists and
    the ``tasks`` (a one-task run stores a plain LossNormalizer instead)."""

    def __init__(self, tasks: Sequence[str], init_value: float, momentum: float) -> None:
        self.tasks = list(tasks)
        self.normalizers = [LossNormalizer(init_value, momentum) for _ in self.tasks]

    def __getitem__(self, i: int) -> LossNormalizer:
        return self.normalizers[i]

    def state_dict(self) -> Dict[str, list]:
        return {"value": [n.value for n in self.normalizers],
                "momentum": [n.momentum for n in self.normalizers], "tasks": list(self.tasks)}

    def load_state_dict(self, state: Dict[str, list]) -> None:
        assert list(state["tasks"]) == self.tasks, (state["tasks"], self.tasks)
        for n, v, m in zip(self.normalizers, state["value"], state["momentum"]):
            n.load_state_dict({"value": v, "momentum": m})


def task_losses(outputs: dict, batch: dict, normalizers: TaskNormalizers, train_cfg: TrainCfgConfig,
                layout: TaskLayout, reg_per_task: bool, weights: Sequence[float]
                ) -> Dict[str, Union[Tensor, int]]:
    """The several-task loss of one batch (module docstring). ``batch`` as collated, with
    ``annotated (B, num_tasks)`` bool. Returns ``final_loss`` (the weighted total), ``cls_loss``
    and ``reg_loss`` (weighted sums over tasks), ``<task>_cls_loss`` / ``<task>_reg_loss`` /
    ``<task>_loss`` per task, and ``num_pos`` (int)."""
    points = torch.cat(outputs["points"], dim=0)                               # (P, 4)
    annotated: Optional[Tensor] = batch.get("annotated")
    out: Dict[str, Union[Tensor, int]] = {}
    total = cls_total = reg_total = None
    num_pos = 0
    for (cls_logits, offsets), (i, task, lo, n), w in zip(
            task_head_outputs(outputs, layout, reg_per_task), layout, weights):
        segs, labs = task_events(batch["segments"], batch["labels"], lo, lo + n)
        cls_t, reg_t = assign_targets(points, segs, labs, n, train_cfg.center_sample,
                                      train_cfg.center_sample_radius)
        masks = outputs["fpn_masks"]
        if annotated is not None and not bool(annotated[:, i].all()):
            has = annotated[:, i].to(masks[0].device)[:, None]                 # (B, 1)
            masks = [m & has for m in masks]
        losses = detection_losses(cls_logits, offsets, masks, cls_t, reg_t, normalizers[i],
                                  train_cfg.loss_weight, train_cfg.label_smoothing)
        final = losses["final_loss"] * w
        total = final if total is None else total + final
        cls_w, reg_w = losses["cls_loss"] * w, losses["reg_loss"] * w
        cls_total = cls_w if cls_total is None else cls_total + cls_w
        reg_total = reg_w if reg_total is None else reg_total + reg_w
        out[f"{task}_cls_loss"] = losses["cls_loss"]
        out[f"{task}_reg_loss"] = losses["reg_loss"]
        out[f"{task}_loss"] = losses["final_loss"]
        num_pos += int(losses["num_pos"])
    out.update(cls_loss=cls_total, reg_loss=reg_total, final_loss=total, num_pos=num_pos)
    return out
