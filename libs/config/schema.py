"""The defaults table: every config key, its default, its type and one line saying what it does.

This file is the single declaration of the config schema (STYLE s.3). ``libs/config/loader.py``
merges a YAML file onto it, refuses keys not declared here, checks types, choices and ranges,
and fills the ``derived`` section. The section names follow the original ActionFormer/PT configs
(``dataset``, ``loader``, ``model``, ``train_cfg``, ``test_cfg``, ``opt``) plus ``train`` for the loop.

Conventions:
- ``Key(default, doc, type, ...)``: ``type`` is the accepted Python type (``float`` also accepts
  ints; ``list`` items are checked with ``item``); ``nullable`` allows ``null``; ``required`` means
  the user must set it (default ``None``).
- ``ListOf(schema, doc)``: a list of mappings, each validated against ``schema`` (modalities).
- Times: ``seconds`` at the edges, ``grid cells`` inside the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Key:
    default: Any
    doc: str
    type: type = str
    nullable: bool = False
    required: bool = False
    choices: Optional[Tuple[Any, ...]] = None
    min: Optional[float] = None          # inclusive lower bound (numbers, or list items)
    max: Optional[float] = None          # inclusive upper bound
    item: Optional[type] = None          # element type for list-valued keys
    length: Optional[int] = None         # exact list length, if fixed
    min_length: Optional[int] = None     # minimum list length


@dataclass(frozen=True)
class ListOf:
    schema: Mapping[str, Key]
    doc: str
    min_length: int = 1


TASKS = ("sound_localisation", "action_localisation")

# One feature family of a video (SPEC s.2.2-2.3). Channels are concatenated in list order.
MODALITY = {
    "name": Key(None, "short name used in logs and errors (e.g. 'audio', 'umt')", str, required=True),
    "path": Key(None, "folder of <video_id><ext> files, or one .h5 file holding a dataset per video id",
                str, required=True),
    "ext": Key(None, "file extension: .npy, .pt or .h5 (null: .h5 if path ends in .h5, else .npy)", str,
               nullable=True, choices=(".npy", ".pt", ".h5")),
    "dim": Key(None, "channels per row in the files (BEATs 768, UMT/VideoMAE 1024)", int, required=True,
               min=1),
    "primary": Key(False, "this modality sets the time grid (exactly one modality is primary)", bool),
    "rows_per_step": Key(1, "rows stacked as channels per primary row after resampling (original TAL "
                            "audio: 2); the primary must use 1", int, min=1),
    "resample": Key("endpoint", "resampling to the primary's rows: 'endpoint' (first/last rows aligned, "
                                "the original's interp1d) or 'centre' (align_corners=False, the original "
                                "TAL video families)", str, choices=("endpoint", "centre")),
}

SCHEMA = {
    "task": Key("sound_localisation", "which annotation list to localise: sound (TSL) or action (TAL)",
                str, choices=TASKS),
    "seed": Key(1234567891, "random seed for python, numpy and torch", int, min=0),
    "output_folder": Key("ckpt", "parent folder of experiment folders (ckpt/<config stem>_<name>/)", str),
    "dataset": {
        "annotation_file": Key(None, "Perception Test annotation JSON (SPEC s.2.1)", str, required=True),
        "train_split": Key(["train"], "splits (metadata.split) used for training", list, item=str,
                           min_length=1),
        "val_split": Key(["valid"], "splits evaluated by eval.py and validation during training", list,
                         item=str, min_length=1),
        "num_classes": Key(12, "number of classes; label ids must lie in [0, num_classes)", int, min=1),
        "modalities": ListOf(MODALITY, "feature families, channels concatenated in this order"),
        "on_missing": Key("error", "a missing/unreadable feature file: 'error' (listed up front) or "
                                   "'zeros' (filled with zeros and counted in the log)", str,
                          choices=("error", "zeros")),
        "time_grid": Key("duration", "seconds <-> grid cells mapping: 'duration' (features span the "
                                     "video) or 'stride' (the original's fps/feat_stride arithmetic)",
                         str, choices=("duration", "stride")),
        "fps": Key(None, "stride grid only: frame rate of the feature clock (the original's "
                         "default_fps: 768 TSL BEATs, 15 TAL)", float, nullable=True, min=1e-6),
        "feat_stride": Key(16.0, "stride grid only: frames between consecutive primary rows", float,
                           min=1e-6),
        "num_frames": Key(16.0, "stride grid only: frames seen by one primary row", float, min=1e-6),
        "max_seq_len": Key(192, "grid cells per video at training (and with force_upsampling)", int, min=1),
        "force_upsampling": Key(True, "linearly resize every video's features to max_seq_len cells", bool),
        "trunc_thresh": Key(0.5, "training crop keeps an event if at least this fraction of it is inside",
                            float, min=0.0, max=1.0),
        "crop_ratio": Key([0.9, 1.0], "training crop length as a fraction [lo, hi] of the video (null: "
                                      "no crop)", list, item=float, nullable=True, length=2, min=0.0,
                          max=1.0),
        "end_tolerance": Key(1.0, "seconds an event may run past the video end before it is an error",
                             float, min=0.0),
        "cache": Key(True, "keep assembled features in memory after the first read", bool),
    },
    "loader": {
        "batch_size": Key(16, "videos per training batch (per process)", int, min=1),
        "eval_batch_size": Key(16, "videos per inference batch (results do not depend on it)", int, min=1),
        "num_workers": Key(2, "DataLoader worker processes (0: load in the main process)", int, min=0),
    },
    "model": {
        "backbone": Key("single_stream", "backbone: 'single_stream' (concatenated features, TSL) or "
                                         "'fusion' (per-modality 1x1 projection, TAL)", str,
                        choices=("single_stream", "fusion")),
        "backbone_arch": Key([2, 2, 5], "#embedding convs, #stem blocks, #branch (downsampling) blocks",
                             list, item=int, length=3, min=0),
        "scale_factor": Key(2, "downsampling factor between pyramid levels", int, min=1),
        "n_head": Key(8, "attention heads (width must be divisible by it)", int, min=1),
        "n_mha_win_size": Key([7, 7, 7, 7, 7, -1], "local attention window per level (<= 1: global)",
                              list, item=int),
        "embd_kernel_size": Key(3, "kernel of the embedding convs (odd)", int, min=1),
        "embd_dim": Key(512, "backbone width (the fused width for 'fusion'; TAL 1024)", int, min=1),
        "proj_dims": Key(None, "fusion only: width of each modality's 1x1 projection, in modality order "
                               "(null: each modality's input width)", list, item=int, nullable=True,
                         min=1),
        "embd_with_ln": Key(True, "LayerNorm after each embedding conv", bool),
        "neck": Key("identity", "neck: 'identity' (LayerNorm per level) or 'fpn'", str,
                    choices=("identity", "fpn")),
        "fpn_dim": Key(None, "fpn neck width (null: backbone width; identity neck keeps the backbone "
                             "width)", int, nullable=True, min=1),
        "fpn_with_ln": Key(True, "LayerNorm in the neck", bool),
        "fpn_start_level": Key(0, "first pyramid level passed to the heads", int, min=0),
        "head_dim": Key(None, "head width (null: neck width)", int, nullable=True, min=1),
        "head_kernel_size": Key(3, "kernel of the head convs (odd)", int, min=1),
        "head_num_layers": Key(3, "convs per head including the output conv", int, min=1),
        "head_with_ln": Key(True, "LayerNorm inside the heads", bool),
        "max_buffer_len_factor": Key(1.0, "point buffers cover max_seq_len x this many cells (the "
                                          "inference length limit)", float, min=1.0),
        "use_abs_pe": Key(True, "add the sinusoidal absolute position embedding", bool),
        "use_rel_pe": Key(False, "learnable relative position bias in local attention", bool),
        "regression_range": Key([[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]],
                                "per level [lo, hi] of max(left, right) distance in grid cells, one per "
                                "level", list, item=list),
        "dropout": Key(0.0, "dropout in the transformer MLPs", float, min=0.0, max=1.0),
        "droppath": Key(0.1, "stochastic depth rate (> 0 adds LayerScale vectors to every block)", float,
                        min=0.0, max=1.0),
    },
    "train_cfg": {
        "center_sample": Key("radius", "positive points: 'radius' (centre sampling) or 'none' (anywhere "
                                       "inside the event)", str, choices=("radius", "none")),
        "center_sample_radius": Key(1.5, "centre sampling radius in units of the level stride", float,
                                    min=0.0),
        "loss_weight": Key(1.0, "weight of the regression loss (<= 0: balance it to the cls loss)",
                           float),
        "cls_prior_prob": Key(0.01, "prior probability that sets the classifier's initial bias", float,
                              min=1e-8, max=1.0),
        "init_loss_norm": Key(250.0, "initial value of the loss normaliser EMA", float, min=1e-8),
        "loss_norm_momentum": Key(0.9, "momentum of the loss normaliser EMA", float, min=0.0, max=1.0),
        "label_smoothing": Key(0.0, "label smoothing of the classification targets", float, min=0.0,
                               max=1.0),
        "head_empty_cls": Key([], "class ids with no training events (classifier bias set near 0)",
                              list, item=int, min=0),
    },
    "opt": {
        "type": Key("AdamW", "optimizer: 'AdamW' or 'SGD'", str, choices=("AdamW", "SGD")),
        "learning_rate": Key(1e-3, "peak learning rate (per process)", float, min=0.0),
        "weight_decay": Key(0.05, "weight decay of conv/linear weights (others: none)", float, min=0.0),
        "momentum": Key(0.9, "SGD momentum", float, min=0.0, max=1.0),
        "epochs": Key(50, "epochs after warmup", int, min=0),
        "warmup": Key(True, "linear warmup before the schedule", bool),
        "warmup_epochs": Key(5, "warmup epochs (lr rises from 0 to learning_rate)", int, min=0),
        "schedule_type": Key("cosine", "after warmup: 'cosine' or 'multistep'", str,
                             choices=("cosine", "multistep")),
        "schedule_steps": Key([], "multistep: epochs (after warmup) at which lr is multiplied by gamma",
                              list, item=int, min=0),
        "schedule_gamma": Key(0.1, "multistep: lr factor at each step", float, min=0.0),
        "eta_min": Key(1e-8, "cosine: final learning rate", float, min=0.0),
        "clip_grad_l2norm": Key(1.0, "clip the total gradient L2 norm to this (<= 0: off)", float),
        "early_stop_epochs": Key(None, "stop after this many epochs in all (null: warmup + epochs)", int,
                                 nullable=True, min=1),
    },
    "train": {
        "ema_decay": Key(0.999, "model EMA decay", float, min=0.0, max=1.0),
        "ema_warmup": Key(True, "EMA decay min(decay, (1+n)/(10+n)) after n updates (false: the "
                                "original's fixed decay)", bool),
        "ckpt_freq": Key(5, "save epoch_NNN.pth.tar every this many epochs (and the last)", int, min=1),
        "eval_freq": Key(0, "validation mAP every this many epochs (0: never)", int, min=0),
        "print_freq": Key(10, "log losses every this many iterations", int, min=1),
    },
    "test_cfg": {
        "pre_nms_thresh": Key(0.001, "per level: keep candidates with score > this", float, min=0.0,
                              max=1.0),
        "pre_nms_topk": Key(5000, "per level: keep at most this many candidates", int, min=1),
        "duration_thresh": Key(0.05, "drop candidates shorter than this (grid cells)", float, min=0.0),
        "nms_method": Key("soft", "'soft' (Gaussian soft-NMS), 'linear' (linear soft-NMS) or 'hard'",
                          str, choices=("soft", "linear", "hard")),
        "iou_threshold": Key(0.1, "hard/linear NMS IoU threshold (unused by Gaussian)", float, min=0.0,
                             max=1.0),
        "nms_sigma": Key(0.4, "Gaussian soft-NMS: w = exp(-iou^2 / sigma)", float, min=1e-8),
        "min_score": Key(0.001, "drop detections whose (decayed) score falls below this", float,
                         min=0.0),
        "max_seg_num": Key(500, "detections kept per video", int, min=1),
        "multiclass_nms": Key(True, "NMS per class (true) or class-agnostic with voting (false)", bool),
        "voting_thresh": Key(0.75, "class-agnostic only: score-weighted voting IoU (0: off)", float,
                             min=0.0, max=1.0),
        "nms_backend": Key("auto", "NMS implementation: 'auto' (compiled if built), 'cpp', 'cuda' or "
                                   "'torch'", str, choices=("auto", "cpp", "cuda", "torch")),
        "ext_score_file": Key(None, "JSON of video-level class scores to combine with detections", str,
                              nullable=True),
        "ext_score_topk": Key(2, "external scores: classes per video kept", int, min=1),
        "ext_score_num_pred": Key(200, "external scores: detections per video kept before fusion", int,
                                  min=1),
    },
}

# Filled by config.py at load; written to the resolved config; never set by users.
DERIVED = {
    "input_dims": "channels of each modality after rows_per_step stacking, in modality order",
    "input_dim": "total input channels (sum of input_dims)",
}
