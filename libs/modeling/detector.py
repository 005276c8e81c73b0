"""The ActionFormer detector network: backbone -> neck -> heads, plus candidate points.

Several tasks (a unified model, README: unified model) share the backbone and the neck; every
task has its own classification head (``cls_heads.<task>``) and the regression head is shared
(``reg_head``) or per task (``reg_heads.<task>``, ``model.task_heads.regression``). A one-task
model has exactly the original layout (``cls_head``, ``reg_head``), so original checkpoints load.

``Detector`` takes typed keyword arguments named like the config keys and works without a
config; :meth:`Detector.from_config` is the only place that reads a config, and
:meth:`Detector.from_checkpoint` rebuilds a trained model from the config its checkpoint carries.
The backbone's input channel groups (``input_groups``, ``group_proj_dims``) are computed once, at
config load (``libs/config/checks.py: input_groups``).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from libs.common.checkpoints import load_checkpoint
from libs.common.errors import UserError
from libs.config import Config, resolve_config
from libs.config.tasks import TaskLayout, task_values
from libs.config.upgrade import upgrade_stored_config

from .backbone import build_backbone
from .heads import ClsHead, RegHead
from .layers import AffineDropPath
from .modality_dropout import ModalityDropout
from .neck import build_neck
from .points import PointGenerator
from .task_gradient import branch_features

class Detector(nn.Module):
    """ActionFormer network. ``forward(feats (B, C, T), masks (B, 1, T) bool) -> dict``:

    ``backbone_feats`` / ``fpn_feats``: lists of ``(B, C_l, T_l)``; ``fpn_masks``: list of
    ``(B, T_l)`` bool; ``points``: list of ``(T_l, 4)`` rows ``[t, lo, hi, stride]`` (grid cells);
    ``cls_logits``: list of ``(B, T_l, K)`` (several tasks: the tasks' logits side by side, the
    joint label space of ``libs/config/tasks.py``); ``offsets``: list of ``(B, T_l, 2 R)`` (stride
    units; ``R`` regression heads: 1, or one per task in task order).
    ``T`` must be divisible by :attr:`max_div_factor`; in training ``T <= max_seq_len``; in eval
    a ``T >= max_seq_len`` stretches the position embedding and ``T`` is limited by the point
    buffers (``max_seq_len * max_buffer_len_factor``).
    """

    def __init__(self, *, input_groups: Sequence[int], group_proj_dims: Optional[Sequence[int]],
                 tasks: Sequence[str], task_num_classes: Sequence[int], task_regression: str,
                 input_dims: Sequence[int], modality_dropout: float,
                 max_seq_len: int, backbone: str, backbone_arch: Sequence[int],
                 scale_factor: int, n_head: int, n_mha_win_size: Sequence[int],
                 embd_kernel_size: int, embd_dim: int, embd_with_ln: bool, neck: str,
                 fpn_dim: Optional[int], fpn_with_ln: bool, fpn_start_level: int,
                 head_dim: Optional[int], head_kernel_size: int, head_num_layers: int,
                 head_with_ln: bool, max_buffer_len_factor: float, use_abs_pe: bool,
                 use_rel_pe: bool, regression_range: Sequence[Sequence[float]], dropout: float,
                 droppath: float, cls_prior_prob: Sequence[float],
                 head_empty_cls: Sequence[int], task_gradient: str = "sum",
                 offset_activation: str = "relu") -> None:
        super().__init__()
        assert len(tasks) == len(task_num_classes) == len(cls_prior_prob) >= 1
        self.layout = TaskLayout(tuple(tasks), tuple(int(n) for n in task_num_classes))
        self.num_classes = self.layout.total_classes
        self.reg_per_task = len(tasks) > 1 and task_regression == "per_task"
        self.task_gradient = task_gradient
        self.max_seq_len = max_seq_len
        self.modality_dropout = ModalityDropout(input_dims, modality_dropout)
        self.backbone = build_backbone(
            backbone, input_groups=list(input_groups), group_proj_dims=group_proj_dims,
            embd_dim=embd_dim, n_head=n_head,
            max_seq_len=max_seq_len, backbone_arch=tuple(backbone_arch), scale_factor=scale_factor,
            n_mha_win_size=list(n_mha_win_size), embd_kernel_size=embd_kernel_size,
            embd_with_ln=embd_with_ln, use_abs_pe=use_abs_pe, use_rel_pe=use_rel_pe, dropout=dropout,
            droppath=droppath)
        num_levels = len(self.backbone.strides)
        self.strides: List[int] = list(self.backbone.strides[fpn_start_level:])
        assert len(regression_range) == len(self.strides), "one regression range per head level"
        self.neck = build_neck(
            neck, in_channels=[self.backbone.out_channels] * num_levels,
            out_channels=self.backbone.out_channels if fpn_dim is None else fpn_dim,
            scale_factor=scale_factor, start_level=fpn_start_level, with_ln=fpn_with_ln)
        self.point_generator = PointGenerator(max_seq_len, self.strides, regression_range,
                                              max_buffer_len_factor)
        neck_dim = self.neck.out_channels
        head_dim = neck_dim if head_dim is None else head_dim
        offsets = self.layout.offsets
        cls_heads = [
            ClsHead(neck_dim, head_dim, n, prior_prob=p, num_layers=head_num_layers,
                    kernel_size=head_kernel_size, with_ln=head_with_ln,
                    empty_cls=[c - lo for c in head_empty_cls if lo <= c < lo + n])
            for n, p, lo in zip(self.task_num_classes, cls_prior_prob, offsets)]

        def reg_head() -> RegHead:
            return RegHead(neck_dim, head_dim, len(self.strides), num_layers=head_num_layers,
                           kernel_size=head_kernel_size, with_ln=head_with_ln,
                           activation=offset_activation)

        if len(tasks) == 1:          # the original layout (state-dict keys cls_head., reg_head.)
            self.cls_head = cls_heads[0]
        else:
            self.cls_heads = nn.ModuleDict(dict(zip(self.tasks, cls_heads)))
        if self.reg_per_task:
            self.reg_heads = nn.ModuleDict({t: reg_head() for t in self.tasks})
        else:
            self.reg_head = reg_head()

    @property
    def tasks(self) -> List[str]:
        return list(self.layout.tasks)

    @property
    def task_num_classes(self) -> List[int]:
        return list(self.layout.num_classes)

    @property
    def max_div_factor(self) -> int:
        """Inputs are padded to a multiple of this: max over levels of ``s * (w // 2) * 2`` or ``s``."""
        return int(self.backbone.max_div_factor)

    def set_stochastic_depth(self, enabled: bool) -> None:
        """Switch stochastic depth on/off in every block; LayerScale factors always apply."""
        for m in self.modules():
            if isinstance(m, AffineDropPath):
                m.stochastic_depth = enabled

    def forward(self, feats: torch.Tensor, masks: torch.Tensor) -> Dict[str, List[torch.Tensor]]:
        # feats: (B, C, T); masks: (B, 1, T) bool
        assert feats.dim() == 3 and masks.shape == (feats.shape[0], 1, feats.shape[2])
        masks = masks.bool()
        if self.training:
            feats = self.modality_dropout(feats)
        backbone_feats, backbone_masks = self.backbone(feats, masks)
        fpn_feats, fpn_masks = self.neck(backbone_feats, backbone_masks)
        points = self.point_generator([f.shape[-1] for f in fpn_feats])
        if len(self.tasks) == 1:
            cls_logits = self.cls_head(fpn_feats, fpn_masks)              # list of (B, K, T_l)
        else:                                                             # tasks side by side
            task_feats = branch_features(fpn_feats, len(self.tasks), self.task_gradient)
            per_task = [self.cls_heads[t](f, fpn_masks) for t, f in zip(self.tasks, task_feats)]
            cls_logits = [torch.cat(levels, dim=1) for levels in zip(*per_task)]
        if self.reg_per_task:
            per_task = [self.reg_heads[t](f, fpn_masks) for t, f in zip(self.tasks, task_feats)]
            offsets = [torch.cat(levels, dim=1) for levels in zip(*per_task)]  # (B, 2 R, T_l)
        else:
            offsets = self.reg_head(fpn_feats, fpn_masks)                 # list of (B, 2, T_l)
        return {
            "backbone_feats": backbone_feats,
            "fpn_feats": fpn_feats,
            "fpn_masks": [m.squeeze(1) for m in fpn_masks],
            "points": points,
            "cls_logits": [x.permute(0, 2, 1) for x in cls_logits],
            "offsets": [x.permute(0, 2, 1) for x in offsets],
        }

    @classmethod
    def from_config(cls, cfg: Config) -> "Detector":
        """Build from a resolved config (``model``, ``derived`` (tasks, classes, input groups),
        ``dataset.max_seq_len``, ``train_cfg.cls_prior_prob`` / ``head_empty_cls`` / ``task_gradient``)."""
        m, d = cfg.model, cfg.derived
        return cls(input_groups=d.input_groups, group_proj_dims=d.group_proj_dims,
                   tasks=d.tasks, task_num_classes=d.task_num_classes,
                   task_regression=m.task_heads.regression, input_dims=d.input_dims,
                   max_seq_len=cfg.dataset.max_seq_len,
                   cls_prior_prob=task_values(cfg.train_cfg.cls_prior_prob, d.tasks),
                   head_empty_cls=cfg.train_cfg.head_empty_cls,
                   task_gradient=cfg.train_cfg.task_gradient,
                   **{f.name: getattr(m, f.name) for f in dataclasses.fields(m)
                      if f.name not in ("proj_dims", "task_heads")})

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], weights: str = "ema") -> "Detector":
        """The trained model of a checkpoint written by train.py, built from the config the
        checkpoint carries; ``weights`` is ``'ema'`` (``state_dict_ema``) or ``'raw'``."""
        ckpt = load_checkpoint(path)
        model = cls.from_config(checkpoint_config(ckpt, path))
        load_weights(model, ckpt, path, weights)
        return model


def checkpoint_config(ckpt: Mapping[str, Any], path: Union[str, Path]) -> Config:
    """The resolved config stored in a checkpoint of ours (a one-line error if it has none)."""
    if not isinstance(ckpt.get("config"), dict):
        raise UserError(f"checkpoint carries no config ({path}): expected a checkpoint written by "
                        f"train.py or converted with tools/convert_checkpoint.py")
    raw, notes = upgrade_stored_config(ckpt["config"])
    if notes:
        logging.getLogger(__name__).info("%s: stored config of an earlier version upgraded: %s",
                                         path, ", ".join(notes))
    return resolve_config(raw, f"{path}, stored config")


def load_weights(model: nn.Module, ckpt: Mapping[str, Any], path: Union[str, Path],
                 weights: str = "ema") -> None:
    """Load ``state_dict_ema`` (``weights='ema'``) or ``state_dict`` (``'raw'``) strictly; a
    missing entry or a shape mismatch is a one-line error naming the checkpoint."""
    key = {"ema": "state_dict_ema", "raw": "state_dict"}[weights]
    if key not in ckpt:
        raise UserError(f"checkpoint has no '{key}' ({path}): expected a checkpoint written by "
                        f"train.py or converted with tools/convert_checkpoint.py")
    try:
        model.load_state_dict(ckpt[key])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UserError(f"checkpoint does not match the model ({path}): "
                        f"{' '.join(first[:3])[:400]}") from None


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` (of the module inside a DDP wrapper)."""
    return sum(p.numel() for p in getattr(model, "module", model).parameters())
