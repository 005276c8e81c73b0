"""The ActionFormer detector network: backbone -> neck -> shared heads, plus candidate points.

``Detector`` takes typed keyword arguments named like the config keys and works without a
config; :meth:`Detector.from_config` is the only place that reads the config.

Input groups of the ``fusion`` backbone (rule used by ``from_config``): each modality of
``dataset.modalities`` contributes ``rows_per_step`` channel blocks of ``dim`` channels
(``cfg['derived']['input_dims'][i] = dim * rows_per_step``).
- ``model.proj_dims`` null or with one entry per *row group* (sum of ``rows_per_step``): each
  stacked row is its own projection group, as in the original TAL layout (BEATs 768 x 2 ->
  groups 768, 768). With null, each group keeps its width.
- ``model.proj_dims`` with one entry per *modality* (and a different count of row groups): each
  modality is one projection group of ``dim * rows_per_step`` channels.
- Any other length is a config error.
The ``single_stream`` backbone sees the concatenation (``sum(input_dims)`` channels).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from libs.common.errors import UserError

from .backbone import build_backbone
from .heads import ClsHead, RegHead
from .layers import AffineDropPath
from .neck import build_neck
from .points import PointGenerator

DEFAULT_RANGES = ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000))


class Detector(nn.Module):
    """ActionFormer network. ``forward(feats (B, C, T), masks (B, 1, T) bool) -> dict``:

    ``backbone_feats`` / ``fpn_feats``: lists of ``(B, C_l, T_l)``; ``fpn_masks``: list of
    ``(B, T_l)`` bool; ``points``: list of ``(T_l, 4)`` rows ``[t, lo, hi, stride]`` (grid cells);
    ``cls_logits``: list of ``(B, T_l, K)``; ``offsets``: list of ``(B, T_l, 2)`` (stride units).
    ``T`` must be divisible by :attr:`max_div_factor`; in training ``T <= max_seq_len``; in eval
    a ``T >= max_seq_len`` stretches the position embedding and ``T`` is limited by the point
    buffers (``max_seq_len * max_buffer_len_factor``).
    """

    def __init__(self, *, input_dims: Sequence[int], num_classes: int, max_seq_len: int,
                 backbone: str = "single_stream", proj_dims: Optional[Sequence[int]] = None,
                 backbone_arch: Sequence[int] = (2, 2, 5), scale_factor: int = 2, n_head: int = 8,
                 n_mha_win_size: Union[int, Sequence[int]] = (7, 7, 7, 7, 7, -1),
                 embd_kernel_size: int = 3, embd_dim: int = 512, embd_with_ln: bool = True,
                 neck: str = "identity", fpn_dim: Optional[int] = None, fpn_with_ln: bool = True,
                 fpn_start_level: int = 0, head_dim: Optional[int] = None, head_kernel_size: int = 3,
                 head_num_layers: int = 3, head_with_ln: bool = True,
                 max_buffer_len_factor: float = 1.0, use_abs_pe: bool = True, use_rel_pe: bool = False,
                 regression_range: Sequence[Sequence[float]] = DEFAULT_RANGES, dropout: float = 0.0,
                 droppath: float = 0.1, cls_prior_prob: float = 0.01,
                 head_empty_cls: Sequence[int] = ()) -> None:
        super().__init__()
        if isinstance(n_mha_win_size, int):
            n_mha_win_size = [n_mha_win_size] * (backbone_arch[2] + 1)
        self.num_classes = num_classes
        self.max_seq_len = max_seq_len
        self.backbone = build_backbone(
            backbone, input_dims=list(input_dims), proj_dims=proj_dims, embd_dim=embd_dim, n_head=n_head,
            max_seq_len=max_seq_len, backbone_arch=tuple(backbone_arch), scale_factor=scale_factor,
            n_mha_win_size=list(n_mha_win_size), embd_kernel_size=embd_kernel_size,
            embd_with_ln=embd_with_ln, use_abs_pe=use_abs_pe, use_rel_pe=use_rel_pe, dropout=dropout,
            droppath=droppath)
        num_levels = len(self.backbone.strides)
        self.strides: List[int] = list(self.backbone.strides[fpn_start_level:])
        if len(regression_range) != len(self.strides):
            raise ValueError(f"{len(regression_range)} regression ranges for {len(self.strides)} "
                             "pyramid levels")
        self.neck = build_neck(
            neck, in_channels=[self.backbone.out_channels] * num_levels,
            out_channels=self.backbone.out_channels if fpn_dim is None else fpn_dim,
            scale_factor=scale_factor, start_level=fpn_start_level, with_ln=fpn_with_ln)
        self.point_generator = PointGenerator(max_seq_len, self.strides, regression_range,
                                              max_buffer_len_factor)
        neck_dim = self.neck.out_channels
        head_dim = neck_dim if head_dim is None else head_dim
        self.cls_head = ClsHead(neck_dim, head_dim, num_classes, prior_prob=cls_prior_prob,
                                num_layers=head_num_layers, kernel_size=head_kernel_size,
                                with_ln=head_with_ln, empty_cls=head_empty_cls)
        self.reg_head = RegHead(neck_dim, head_dim, len(self.strides), num_layers=head_num_layers,
                                kernel_size=head_kernel_size, with_ln=head_with_ln)

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
        backbone_feats, backbone_masks = self.backbone(feats, masks)
        fpn_feats, fpn_masks = self.neck(backbone_feats, backbone_masks)
        points = self.point_generator([f.shape[-1] for f in fpn_feats])
        cls_logits = self.cls_head(fpn_feats, fpn_masks)                  # list of (B, K, T_l)
        offsets = self.reg_head(fpn_feats, fpn_masks)                     # list of (B, 2, T_l)
        return {
            "backbone_feats": backbone_feats,
            "fpn_feats": fpn_feats,
            "fpn_masks": [m.squeeze(1) for m in fpn_masks],
            "points": points,
            "cls_logits": [x.permute(0, 2, 1) for x in cls_logits],
            "offsets": [x.permute(0, 2, 1) for x in offsets],
        }

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "Detector":
        """Build from a loaded config (``model``, ``dataset``, ``train_cfg``, ``derived`` sections)."""
        m = cfg["model"]
        input_dims, proj_dims = fusion_groups(cfg) if m["backbone"] == "fusion" else \
            (list(cfg["derived"]["input_dims"]), m["proj_dims"])
        keys = ("backbone", "backbone_arch", "scale_factor", "n_head", "n_mha_win_size",
                "embd_kernel_size", "embd_dim", "embd_with_ln", "neck", "fpn_dim", "fpn_with_ln",
                "fpn_start_level", "head_dim", "head_kernel_size", "head_num_layers", "head_with_ln",
                "max_buffer_len_factor", "use_abs_pe", "use_rel_pe", "regression_range", "dropout",
                "droppath")
        return cls(input_dims=input_dims, proj_dims=proj_dims,
                   num_classes=cfg["dataset"]["num_classes"], max_seq_len=cfg["dataset"]["max_seq_len"],
                   cls_prior_prob=cfg["train_cfg"]["cls_prior_prob"],
                   head_empty_cls=list(cfg["train_cfg"]["head_empty_cls"]),
                   **{k: m[k] for k in keys})


def fusion_groups(cfg: Dict[str, Any]) -> tuple:
    """``(group input widths, group projection widths or None)`` for the fusion backbone.

    See the module docstring for the rule (row groups unless ``proj_dims`` has one entry per
    modality).
    """
    modal_dims = [int(d) for d in cfg["derived"]["input_dims"]]
    modalities = cfg["dataset"].get("modalities") or []
    if len(modalities) == len(modal_dims):
        rows = [int(mod.get("rows_per_step", 1)) for mod in modalities]
    else:
        rows = [1] * len(modal_dims)
    row_groups: List[int] = []
    for dim, k in zip(modal_dims, rows):
        assert dim % k == 0, "derived input dim must be dim x rows_per_step"
        row_groups += [dim // k] * k
    proj_dims = cfg["model"]["proj_dims"]
    if proj_dims is None:
        return row_groups, None
    proj_dims = [int(p) for p in proj_dims]
    if len(proj_dims) == len(row_groups):
        return row_groups, proj_dims
    if len(proj_dims) == len(modal_dims):
        return modal_dims, proj_dims
    raise UserError(f"model.proj_dims has {len(proj_dims)} entries (config): expected one per "
                    f"modality ({len(modal_dims)}) or one per stacked row group ({len(row_groups)})")


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` (of the module inside a DDP wrapper)."""
    return sum(p.numel() for p in getattr(model, "module", model).parameters())
