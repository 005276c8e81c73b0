"""Configs stored by earlier versions of this toolkit (in checkpoints) -> the current schema.

Version 1 kept the NMS keys flat in ``test_cfg`` under other names (``nms_method: soft``,
``nms_sigma``, ``multiclass_nms``, ``nms_backend``, ...); they now live in ``test_cfg.nms`` under
the names of ``batched_nms``'s arguments. Only stored configs are upgraded: a YAML file with old
keys is an error naming the new key (``spec.RENAMED_KEYS``), so the user edits it once.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

_V1_NMS = {"nms_method": "method", "nms_sigma": "sigma", "iou_threshold": "iou_threshold",
           "min_score": "min_score", "max_seg_num": "max_seg_num", "multiclass_nms": "multiclass",
           "voting_thresh": "voting_thresh", "nms_backend": "backend"}
_V1_METHODS = {"soft": "gaussian", "linear": "linear", "hard": "hard"}


def upgrade_stored_config(raw: Any) -> Tuple[Any, List[str]]:
    """``(raw in the current layout, notes)``; ``raw`` itself (and no notes) when it is current."""
    if not isinstance(raw, dict) or not isinstance(raw.get("test_cfg"), dict):
        return raw, []
    old = [k for k in raw["test_cfg"] if k in _V1_NMS]
    if not old:
        return raw, []
    out: Dict[str, Any] = copy.deepcopy(raw)
    test_cfg = out["test_cfg"]
    nms = test_cfg.setdefault("nms", {})
    for k in old:
        value = test_cfg.pop(k)
        nms[_V1_NMS[k]] = _V1_METHODS.get(value, value) if k == "nms_method" else value
    out.pop("derived", None)          # recomputed (it gained keys since)
    return out, [f"test_cfg.{k} -> test_cfg.nms.{_V1_NMS[k]}" for k in old]
