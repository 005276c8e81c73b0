"""The original project's config layout: its defaults, its keys, the keys that map onto ours
unchanged or renamed, and small helpers to walk it (used by ``libs/config/original.py``)."""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Mapping, Optional

from libs.config.spec import SCHEMA

# The original's DEFAULTS (libs/core/config.py of its tal/ and tsl/ folders; docs/numerics.md s.11.1).
ORIGINAL_DEFAULTS: Dict[str, Any] = {
    "init_rand_seed": 1234567891, "dataset_name": "epic", "devices": ["cuda:0"],
    "train_split": ["training"], "val_split": ["validation"], "model_name": "LocPointTransformer",
    "dataset": {"feat_stride": 16, "num_frames": 32, "default_fps": None, "input_dim": 2304,
                "num_classes": 97, "downsample_rate": 1, "max_seq_len": 2304, "trunc_thresh": 0.5,
                "crop_ratio": None, "force_upsampling": False},
    "loader": {"batch_size": 8, "num_workers": 4},
    "model": {"backbone_type": "convTransformer", "fpn_type": "identity", "backbone_arch": [2, 2, 5],
              "scale_factor": 2, "regression_range": [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64],
                                                      [64, 10000]],
              "n_head": 4, "n_mha_win_size": -1, "embd_kernel_size": 3, "embd_dim": 512,
              "fused_embd": None, "embd_with_ln": True, "fpn_dim": 512, "fpn_with_ln": True,
              "fpn_start_level": 0, "head_dim": 512, "head_kernel_size": 3, "head_num_layers": 3,
              "head_with_ln": True, "max_buffer_len_factor": 6.0, "use_abs_pe": False,
              "use_rel_pe": False},
    "train_cfg": {"center_sample": "radius", "center_sample_radius": 1.5, "loss_weight": 1.0,
                  "cls_prior_prob": 0.01, "init_loss_norm": 2000, "clip_grad_l2norm": -1,
                  "head_empty_cls": [], "dropout": 0.0, "droppath": 0.1, "label_smoothing": 0.0},
    "test_cfg": {"pre_nms_thresh": 0.001, "pre_nms_topk": 5000, "iou_threshold": 0.1,
                 "min_score": 0.01, "max_seg_num": 1000, "nms_method": "soft", "nms_sigma": 0.5,
                 "duration_thresh": 0.05, "multiclass_nms": True, "ext_score_file": None,
                 "voting_thresh": 0.75},
    "opt": {"type": "AdamW", "momentum": 0.9, "weight_decay": 0.0, "learning_rate": 1e-3,
            "epochs": 30, "warmup": True, "warmup_epochs": 5, "schedule_type": "cosine",
            "eta_min": 1e-8, "schedule_steps": [], "schedule_gamma": 0.1,
            "early_stop_epochs": None},
}

# Original "section.key" -> ours. Keys of the same name in the same section map to themselves;
# keys needing more than a copy (modalities, windows, widths, NMS extras) are handled in code.
SPECIAL_KEYS = ("dataset.feat_stride", "dataset.num_frames", "model.n_mha_win_size", "model.embd_dim",
            "train_cfg.head_empty_cls", "test_cfg.iou_threshold", "test_cfg.voting_thresh")
RENAMES: Dict[str, str] = {
    **{f"{sec}.{k}": f"{sec}.{k}" for sec in ("dataset", "loader", "model", "train_cfg", "test_cfg",
                                               "opt")
       for k in ORIGINAL_DEFAULTS[sec] if k in SCHEMA[sec] and f"{sec}.{k}" not in SPECIAL_KEYS},
    "init_rand_seed": "seed", "train_split": "dataset.train_split", "val_split": "dataset.val_split",
    "output_folder": "output_folder", "dataset.json_file": "dataset.annotation_file",
    "dataset.default_fps": "dataset.fps", "model.fpn_type": "model.neck",
    "train_cfg.clip_grad_l2norm": "opt.clip_grad_l2norm", "train_cfg.dropout": "model.dropout",
    "train_cfg.droppath": "model.droppath",
    "test_cfg.nms_sigma": "test_cfg.nms.sigma", "test_cfg.min_score": "test_cfg.nms.min_score",
    "test_cfg.max_seg_num": "test_cfg.nms.max_seg_num",
    "test_cfg.multiclass_nms": "test_cfg.nms.multiclass",
}

TOP_KEYS = ("dataset_name", "model_name", "devices", "init_rand_seed", "train_split", "val_split",
        "output_folder", "dataset", "loader", "model", "train_cfg", "test_cfg", "opt")
DATASET_COMMON_KEYS = ("json_file", "feat_stride", "num_frames", "default_fps", "downsample_rate",
                   "max_seq_len", "trunc_thresh", "crop_ratio", "input_dim", "num_classes",
                   "file_prefix", "force_upsampling", "input_modality", "mm_feat_folder", "task")
DATASET_KEYS = {
    "perception": DATASET_COMMON_KEYS + ("feat_folder", "file_ext"),
    "perception_tal_mm": DATASET_COMMON_KEYS + ("feat_folder_list", "file_ext_list", "feat_stride_list",
                                            "num_frames_list"),
}
MODEL_COPIES = ("input_dim", "num_classes", "max_seq_len", "train_cfg", "test_cfg")
SIGNS_TOP = ("dataset_name", "model_name", "devices", "init_rand_seed")
SIGNS_DATASET = ("json_file", "feat_folder", "feat_folder_list", "mm_feat_folder", "file_ext",
                  "file_ext_list", "default_fps", "input_modality", "input_dim")
DEFAULT_VIDEO_DIM = 1024         # UMT-L / VideoMAE-L, when no video feature file can be read
END_TOLERANCE = 1.0e9            # the original never checked event ends against the video length


def get_dotted(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def put_dotted(d: Dict[str, Any], dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for part in head:
        d = d.setdefault(part, {})
    d[last] = value


def plain(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML/our schema use lists)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(plain(value))


def merge_defaults(defaults: Mapping[str, Any], raw: Mapping[str, Any]) -> dict:
    """``raw`` over ``defaults`` recursively (an empty section keeps the defaults)."""
    out = copy.deepcopy(dict(defaults))
    for k, v in raw.items():
        if isinstance(defaults.get(k), dict):
            out[k] = merge_defaults(defaults[k], v or {})
        else:
            out[k] = copy.deepcopy(v)
    return out


def modality_name(folder: str, taken: List[str]) -> str:
    base = os.path.basename(os.path.normpath(str(folder))) or "video"
    low = base.lower()
    name = "videomae" if "videomae" in low else "umt" if "umt" in low else base
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    return out


def probe_pt_dim(folder: str) -> Optional[int]:
    """Channels of the first ``.pt`` feature file (sorted by name) in ``folder``, read by memory
    map; None when there is no readable 2-D tensor file there."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".pt"))
    except (OSError, TypeError):
        return None
    if not names:
        return None
    import torch  # only needed here; keeps config loading light
    try:
        t = torch.load(os.path.join(folder, names[0]), map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 (any unreadable file: fall back to the documented width)
        return None
    return int(t.shape[1]) if isinstance(t, torch.Tensor) and t.dim() == 2 else None
