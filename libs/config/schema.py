"""The config schema: one frozen dataclass per section, one field per key, each with its default
and one line saying what it does. This file is the single declaration of every setting.

``libs/config/loader.py`` merges a YAML file (and ``--opt`` overrides) onto these defaults,
refuses keys not declared here, checks types, choices and ranges, runs the cross-field checks of
``libs/config/checks.py`` once, computes :class:`Derived` and returns a read-only :class:`Config`.
Consumers read attributes (``cfg.dataset.max_seq_len``); nothing else declares a default.

Conventions:
- ``key(default, doc, ...)``: the field's type comes from its annotation (``float`` also accepts
  ints; ``Tuple[X, ...]`` is a YAML list of X; ``Optional[X]`` allows ``null``); ``required``
  means the user must set it (the default ``None`` is never used).
- Times: ``seconds`` at the edges, ``grid cells`` inside the model.
- Per-task keys (``Union[X, Dict[str, X]]``): one X, or with several tasks a mapping
  ``{task: X}`` naming exactly the tasks of ``task`` (``libs/config/tasks.py`` reads them).
- Section names follow the original ActionFormer / Perception Test configs (``dataset``,
  ``loader``, ``model``, ``train_cfg``, ``test_cfg``, ``opt``) plus ``train`` for the loop;
  ``test_cfg.nms`` holds the arguments of ``libs.ops.nms.batched_nms`` under their own names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Optional, Tuple, Union

TASKS = ("sound_localisation", "action_localisation")
NMS_METHODS = ("hard", "linear", "gaussian")
NMS_BACKENDS = ("auto", "cpp", "cuda", "torch")


@dataclass(frozen=True)
class Key:
    """Constraints of one key (its type comes from the field annotation)."""
    doc: str
    required: bool = False
    choices: Optional[Tuple[Any, ...]] = None
    min: Optional[float] = None          # inclusive lower bound (numbers, or list items)
    max: Optional[float] = None          # inclusive upper bound
    length: Optional[int] = None         # exact list length, if fixed
    min_length: Optional[int] = None     # minimum list length


def key(default: Any, doc: str, **constraints: Any) -> Any:
    """A dataclass field with its default and its :class:`Key` constraints in ``metadata``."""
    return field(default=default, metadata={"key": Key(doc, **constraints)})


def section(cls: type, doc: str) -> Any:
    """A nested section field (its defaults are those of ``cls``)."""
    return field(default_factory=cls, metadata={"section": doc})


@dataclass(frozen=True)
class ModalityConfig:
    """One feature family of a video. Channels of all modalities are concatenated in list order."""
    name: str = key(None, "short name used in logs and errors (e.g. 'audio', 'umt')", required=True)
    path: str = key(None, "folder of <video_id><ext> files, or one .h5 file holding a dataset per "
                          "video id", required=True)
    ext: Optional[str] = key(None, "file extension: .npy, .pt or .h5 (null: .h5 if path ends in .h5, "
                                   "else .npy)", choices=(".npy", ".pt", ".h5"))
    dim: int = key(None, "channels per row in the files (BEATs 768, UMT/VideoMAE 1024)",
                   required=True, min=1)
    primary: bool = key(False, "this modality sets the time grid (exactly one modality is primary; "
                               "a single modality is primary by default)")
    rows_per_step: int = key(1, "rows stacked as channels per primary row after resampling "
                                "(original TAL audio: 2); the primary must use 1", min=1)
    resample: str = key("endpoint", "resampling to the primary's rows: 'endpoint' (first/last rows "
                                    "aligned, the original's interp1d) or 'centre' "
                                    "(align_corners=False, the original TAL video families)",
                        choices=("endpoint", "centre"))


@dataclass(frozen=True)
class DatasetConfig:
    annotation_file: Union[str, Tuple[str, ...]] = key(
        None, "Perception Test annotation JSON, or a list of them merged by video id (e.g. the "
              "challenge's per-split files; README: data layout)", required=True, min_length=1)
    train_split: Tuple[str, ...] = key(("train",), "splits (metadata.split) used for training",
                                       min_length=1)
    val_split: Tuple[str, ...] = key(("valid",), "splits evaluated by eval.py (unless --split) and "
                                                 "by validation during training", min_length=1)
    num_classes: Union[int, Dict[str, int]] = key(
        12, "number of classes; label ids must lie in [0, num_classes); with several tasks a "
            "mapping {task: count} naming every task", min=1)
    allow_missing_task: bool = key(False, "several tasks: a non-test video without one task's "
                                          "event list is kept and that task gives no loss for it "
                                          "(false: an error naming the video)")
    modalities: Tuple[ModalityConfig, ...] = key(
        (), "feature families, channels concatenated in this order", required=True, min_length=1)
    on_missing: str = key("error", "a missing/unreadable feature file: 'error' (listed up front) or "
                                   "'zeros' (filled with zeros and counted in the log)",
                          choices=("error", "zeros"))
    on_nonfinite: str = key("error", "NaN/inf values in a feature file: 'error' (found at the "
                                     "video's first read, named with the count of bad rows) or "
                                     "'zero' (replaced by 0 and logged)", choices=("error", "zero"))
    time_grid: str = key("duration", "seconds <-> grid cells mapping: 'duration' (features span the "
                                     "video) or 'stride' (the original's fps/feat_stride arithmetic)",
                         choices=("duration", "stride"))
    fps: Optional[float] = key(None, "stride grid only (required there): frame rate of the feature "
                                     "clock (the original's default_fps: 768 TSL BEATs, 15 TAL)",
                               min=1e-6)
    feat_stride: float = key(16.0, "stride grid only: frames between consecutive primary rows",
                             min=1e-6)
    num_frames: float = key(16.0, "stride grid only: frames seen by one primary row", min=1e-6)
    max_seq_len: int = key(192, "grid cells per video at training (and with force_upsampling)",
                           min=1)
    force_upsampling: bool = key(True, "linearly resize every video's features to max_seq_len cells")
    trunc_thresh: float = key(0.5, "training crop keeps an event if at least this fraction of it is "
                                   "inside", min=0.0, max=1.0)
    crop_ratio: Optional[Tuple[float, ...]] = key(
        (0.9, 1.0), "training crop length as a fraction [lo, hi] of the video, 0 < lo <= hi (null: "
                    "no crop)", length=2, min=0.0, max=1.0)
    end_tolerance: float = key(1.0, "seconds an event may run past the video end before it is an "
                                    "error", min=0.0)
    cache: bool = key(True, "keep the assembled inputs of the split's first videos that fit "
                            "dataset.cache_max_gb in one shared-memory tensor, written at each "
                            "video's first read (false, and videos past the budget: read from "
                            "disk at every epoch)")
    cache_max_gb: Optional[float] = key(4.0, "most memory the feature cache may hold, GB (1e9 "
                                             "bytes), shared by all loader workers (null: no "
                                             "limit)", min=0.0)
    cache_dtype: str = key("float32", "dtype of the assembled inputs, cached or read from disk "
                                      "alike (float16 halves the cache; docs/numerics.md s.1.5)",
                           choices=("float32", "float16", "bfloat16"))


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = key(16, "videos per training batch (per process)", min=1)
    eval_batch_size: int = key(16, "videos per inference batch (results do not depend on it)", min=1)
    num_workers: int = key(2, "DataLoader worker processes (0: load in the main process)", min=0)


@dataclass(frozen=True)
class TaskHeadsConfig:
    """Several tasks: every task has its own classification head; the regression head is shared
    or per task. A one-task model has exactly one of each (the original layout)."""
    regression: str = key("per_task", "several tasks: one regression head per task ('per_task', "
                                      "measured better on the demo: README unified model) or one "
                                      "for all tasks ('shared')", choices=("shared", "per_task"))


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = key("single_stream", "backbone: 'single_stream' (concatenated features, TSL) or "
                                         "'fusion' (per-modality 1x1 projection, TAL)",
                        choices=("single_stream", "fusion"))
    backbone_arch: Tuple[int, ...] = key((2, 2, 5), "#embedding convs, #stem blocks, #branch "
                                                    "(downsampling) blocks", length=3, min=0)
    scale_factor: int = key(2, "downsampling factor between pyramid levels", min=1)
    n_head: int = key(8, "attention heads (widths must be divisible by it)", min=1)
    n_mha_win_size: Tuple[int, ...] = key((7, 7, 7, 7, 7, -1), "local attention window per pyramid "
                                                               "level, 1 + backbone_arch[2] items "
                                                               "(<= 1: global)")
    embd_kernel_size: int = key(3, "kernel of the embedding convs (odd)", min=1)
    embd_dim: int = key(512, "backbone width (the fused width for 'fusion'; TAL 1024)", min=1)
    proj_dims: Optional[Tuple[int, ...]] = key(
        None, "fusion only: width of each input group's 1x1 projection, one per modality or one per "
              "stacked row group (null: each group's input width)", min=1)
    embd_with_ln: bool = key(True, "LayerNorm after each embedding conv")
    neck: str = key("identity", "neck: 'identity' (LayerNorm per level) or 'fpn'",
                    choices=("identity", "fpn"))
    fpn_dim: Optional[int] = key(None, "fpn neck width (null: backbone width; the identity neck keeps "
                                       "the backbone width)", min=1)
    fpn_with_ln: bool = key(True, "LayerNorm in the neck")
    fpn_start_level: int = key(0, "first pyramid level passed to the heads", min=0)
    head_dim: Optional[int] = key(None, "head width (null: neck width)", min=1)
    head_kernel_size: int = key(3, "kernel of the head convs (odd)", min=1)
    head_num_layers: int = key(3, "convs per head including the output conv", min=1)
    head_with_ln: bool = key(True, "LayerNorm inside the heads")
    offset_activation: str = key(
        "relu", "regression output activation: 'relu' (the original; an output channel whose values "
                "all turn negative gets no gradient again) or 'softplus' (docs/numerics.md s.4.7)",
        choices=("relu", "softplus"))
    max_buffer_len_factor: float = key(1.0, "point buffers cover max_seq_len x this many cells (the "
                                            "inference length limit)", min=1.0)
    use_abs_pe: bool = key(True, "add the sinusoidal absolute position embedding")
    use_rel_pe: bool = key(False, "learnable relative position bias in local attention")
    regression_range: Tuple[Tuple[float, ...], ...] = key(
        ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)),
        "per level [lo, hi] of max(left, right) distance in grid cells, one per level from "
        "fpn_start_level")
    dropout: float = key(0.0, "dropout in the transformer MLPs", min=0.0, max=1.0)
    droppath: float = key(0.1, "stochastic depth rate (> 0 adds LayerScale vectors to every block)",
                          min=0.0, max=1.0)
    modality_dropout: float = key(0.0, "training only: per video, each modality's channels are "
                                       "zeroed with this probability (never all of them; the mask "
                                       "is unchanged); needs 2 or more modalities", min=0.0,
                                  max=1.0)
    task_heads: TaskHeadsConfig = section(TaskHeadsConfig, "several tasks: the heads per task")


@dataclass(frozen=True)
class TrainCfgConfig:
    center_sample: str = key("radius", "positive points: 'radius' (centre sampling) or 'none' "
                                       "(anywhere inside the event)", choices=("radius", "none"))
    center_sample_radius: float = key(1.5, "centre sampling radius in units of the level stride",
                                      min=0.0)
    loss_weight: float = key(1.0, "weight of the regression loss (<= 0: balance it to the cls loss)")
    task_loss_weight: Union[float, Dict[str, float]] = key(
        1.0, "several tasks: weight of each task's loss in the total (one number, or {task: w})",
        min=0.0)
    task_gradient: str = key(
        "sum", "several tasks: how the tasks' gradients meet in the shared features: 'sum', "
               "'project' (conflicting parts removed per video and level, PCGrad) or 'priority' "
               "(each task projected only against the tasks listed before it; docs/numerics.md "
               "s.6.6)", choices=("sum", "project", "priority"))
    cls_prior_prob: Union[float, Dict[str, float]] = key(
        0.01, "prior probability that sets the classifier's initial bias (several tasks: one "
              "number, or {task: p} for each task's head)", min=1e-8, max=1.0)
    init_loss_norm: float = key(250.0, "initial value of the loss normaliser EMA", min=1e-8)
    loss_norm_momentum: float = key(0.9, "momentum of the loss normaliser EMA", min=0.0, max=1.0)
    label_smoothing: float = key(0.0, "label smoothing of the classification targets", min=0.0,
                                 max=1.0)
    head_empty_cls: Tuple[int, ...] = key((), "class ids with no training events (classifier bias "
                                              "set near 0); several tasks: ids of the joint label "
                                              "space (derived.class_offsets)", min=0)


@dataclass(frozen=True)
class OptConfig:
    type: str = key("AdamW", "optimizer: 'AdamW' or 'SGD'", choices=("AdamW", "SGD"))
    learning_rate: float = key(1e-3, "peak learning rate of an optimizer step, used as given for "
                                     "any number of processes and accum_steps (README: scaling)",
                               min=0.0)
    weight_decay: float = key(0.05, "weight decay of conv/linear weights (others: none)", min=0.0)
    momentum: float = key(0.9, "SGD momentum", min=0.0, max=1.0)
    epochs: int = key(50, "epochs after warmup", min=0)
    warmup: bool = key(True, "linear warmup before the schedule")
    warmup_epochs: int = key(5, "warmup epochs (lr rises from 0 to learning_rate)", min=0)
    schedule_type: str = key("cosine", "after warmup: 'cosine' or 'multistep'",
                             choices=("cosine", "multistep"))
    schedule_steps: Tuple[int, ...] = key((), "multistep: epochs (after warmup) at which lr is "
                                              "multiplied by gamma", min=0)
    schedule_gamma: float = key(0.1, "multistep: lr factor at each step", min=0.0)
    eta_min: float = key(1e-8, "cosine: final learning rate", min=0.0)
    clip_grad_l2norm: float = key(1.0, "clip the total gradient L2 norm to this (<= 0: off)")
    early_stop_epochs: Optional[int] = key(None, "stop after this many epochs in all (null: warmup "
                                                 "+ epochs)", min=1)


@dataclass(frozen=True)
class TrainConfig:
    ema_decay: float = key(0.999, "model EMA decay", min=0.0, max=1.0)
    ema_warmup: bool = key(True, "EMA decay min(decay, (1+n)/(10+n)) after n updates (false: the "
                                 "original's fixed decay)")
    ckpt_freq: int = key(5, "save epoch_NNN.pth.tar every this many epochs (and the last)", min=1)
    eval_freq: int = key(0, "validation mAP every this many epochs (0: never)", min=0)
    print_freq: int = key(10, "log losses every this many optimizer steps", min=1)
    amp: str = key("none", "mixed precision of the forward pass: 'bf16' (CPU or GPU), 'fp16' (CUDA, "
                           "with a GradScaler) or 'none' (fp32); losses stay fp32 (README: scaling)",
                   choices=("none", "bf16", "fp16"))
    accum_steps: int = key(1, "micro-batches of loader.batch_size per optimizer step (effective "
                              "batch: batch_size x processes x accum_steps)", min=1)
    compile: bool = key(False, "torch.compile the training model (README: scaling, measured)")
    dist_timeout: float = key(600.0, "torchrun runs of train.py and eval.py: seconds a collective "
                                     "waits for the other processes before the job fails",
                              min=1.0)


@dataclass(frozen=True)
class NmsConfig:
    """The keyword arguments of ``libs.ops.nms.batched_nms`` (same names)."""
    method: str = key("gaussian", "'gaussian' (soft-NMS, w = exp(-iou^2 / sigma)), 'linear' "
                                  "(soft-NMS, w = 1 - iou above iou_threshold) or 'hard'",
                      choices=NMS_METHODS)
    iou_threshold: float = key(0.1, "hard/linear NMS IoU threshold (unused by gaussian)", min=0.0,
                               max=1.0)
    sigma: float = key(0.4, "gaussian soft-NMS: w = exp(-iou^2 / sigma)", min=1e-8)
    min_score: float = key(0.001, "drop detections whose (decayed) score falls below this",
                           min=0.0)
    max_seg_num: int = key(500, "detections kept per video", min=1)
    multiclass: bool = key(True, "NMS per class (true) or class-agnostic with voting (false)")
    voting_thresh: float = key(0.75, "class-agnostic only: score-weighted voting IoU (0: off)",
                               min=0.0, max=1.0)
    backend: str = key("auto", "implementation: 'auto' (compiled if built), 'cpp', 'cuda' or "
                               "'torch'", choices=NMS_BACKENDS)


@dataclass(frozen=True)
class TestCfgConfig:
    pre_nms_thresh: float = key(0.001, "per level: keep candidates with score > this", min=0.0,
                                max=1.0)
    pre_nms_topk: int = key(5000, "per level: keep at most this many candidates", min=1)
    duration_thresh: float = key(0.05, "drop candidates shorter than this (grid cells)", min=0.0)
    nms: NmsConfig = section(NmsConfig, "non-maximum suppression (libs/ops/nms.py)")
    ext_score_file: Optional[str] = key(None, "JSON of video-level class scores to combine with "
                                              "detections")
    ext_score_topk: int = key(2, "external scores: classes per video kept", min=1)
    ext_score_num_pred: int = key(200, "external scores: detections per video kept before fusion",
                                  min=1)
    per_task: Optional[Dict[str, Any]] = key(
        None, "several tasks: {task: {key: value}} overrides of the keys above (not ext_score_*) "
              "for one task, e.g. {sound_localisation: {nms: {sigma: 0.5}}} (null: none)")


@dataclass(frozen=True)
class Derived:
    """Computed by the loader from the keys above; recorded in dumps; never set by users."""
    input_dims: Tuple[int, ...] = key((), "channels of each modality after rows_per_step stacking, "
                                          "in modality order")
    input_dim: int = key(0, "total input channels (sum of input_dims)")
    input_groups: Tuple[int, ...] = key((), "input channel groups the backbone sees: one per "
                                            "modality, or for 'fusion' one per projection group")
    group_proj_dims: Optional[Tuple[int, ...]] = key(None, "fusion: projection width per input "
                                                           "group (null: single_stream)")
    max_div_factor: int = key(1, "inputs are padded to a multiple of this (max over pyramid levels "
                                 "of stride x window, or stride for global attention)")
    tasks: Tuple[str, ...] = key((), "the task list (``task`` as a list)")
    task_num_classes: Tuple[int, ...] = key((), "classes of each task, in task order")
    class_offsets: Tuple[int, ...] = key((), "first id of each task's classes in the joint label "
                                             "space the model predicts (0 for one task)")
    num_classes: int = key(0, "classes of all tasks together (the model's label space)")


@dataclass(frozen=True)
class Config:
    """A resolved, validated config (``libs.config.load_config``). Read-only."""
    task: Union[str, Tuple[str, ...]] = key(
        "sound_localisation", "which annotation list(s) to localise: sound (TSL), action (TAL), or "
                              "a list of both for one unified model (README: unified model)",
        choices=TASKS, min_length=1)
    seed: int = key(1234567891, "random seed for python, numpy and torch", min=0)
    output_folder: str = key("ckpt", "parent folder of experiment folders "
                                     "(<output_folder>/<config stem>_<name>/)")
    dataset: DatasetConfig = section(DatasetConfig, "annotations, features and the time grid")
    loader: LoaderConfig = section(LoaderConfig, "data loading")
    model: ModelConfig = section(ModelConfig, "the detector's architecture")
    train_cfg: TrainCfgConfig = section(TrainCfgConfig, "targets, losses and head initialisation")
    opt: OptConfig = section(OptConfig, "optimiser and learning-rate schedule")
    train: TrainConfig = section(TrainConfig, "the training loop: EMA, checkpoints, validation")
    test_cfg: TestCfgConfig = section(TestCfgConfig, "inference and post-processing")
    derived: Derived = field(default_factory=Derived, metadata={"derived": True})
    # Where it came from (not part of the config's value: excluded from dumps and comparisons)
    source: str = field(default="", compare=False, repr=False, metadata={"internal": True})
    given: FrozenSet[str] = field(default=frozenset(), compare=False, repr=False,
                                  metadata={"internal": True})   # dotted keys set in the file
    overrides: FrozenSet[str] = field(default=frozenset(), compare=False, repr=False,
                                      metadata={"internal": True})  # dotted keys set by --opt

    def to_dict(self) -> dict:
        """Plain nested dict/list/scalar form (YAML dumps, checkpoints); internal fields left out."""
        return _plain(self)


def is_section(f: dataclasses.Field) -> bool:
    return "section" in f.metadata


def public_fields(cls: type) -> Tuple[dataclasses.Field, ...]:
    """The fields of a section that a config file may hold (internal ones left out)."""
    return tuple(f for f in dataclasses.fields(cls) if "internal" not in f.metadata)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in public_fields(type(value))}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
