"""What a training checkpoint holds, and checking it fits before resuming from it.

``epoch_NNN.pth.tar`` = ``{epoch, global_step, epoch_step, state_dict, state_dict_ema, ema
(bookkeeping), optimizer, scheduler, loss_normalizer, rng_state, config (the resolved config),
label_map, best_map, best_epoch}``: self-describing (``Detector.from_checkpoint`` rebuilds the
model from ``config``) and enough to continue bit for bit. ``epoch`` counts completed epochs;
``epoch_step`` the batches already trained of epoch ``epoch + 1`` (non-zero only in a checkpoint
written on SIGTERM in mid-epoch, ``interrupted.pth.tar``).

A resume checks everything before it changes anything: :func:`check_resumable` (required keys and
their structure, the architecture of the stored config) and :func:`check_states` (weights against
the model, optimizer groups and moments against its parameters, the schedule's length), each a
one-line :class:`UserError` naming what differs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from libs.common.checkpoints import save_checkpoint
from libs.common.distributed import cleanup, unwrap_model
from libs.common.errors import UserError, format_problems
from libs.common.seed import get_rng_state, set_rng_state
from libs.config.compare import architecture_diff
from libs.config.schema import Config
from libs.config.spec import show_value
from libs.modeling.detector import checkpoint_config
from libs.training.ema import ModelEma
from libs.training.run_dir import BEST_NAME, INTERRUPTED_NAME, Progress, describe_progress
from libs.training.signals import EXIT_REQUEUE

log = logging.getLogger(__name__)

RESUME_KEYS = ("epoch", "global_step", "state_dict", "state_dict_ema", "ema", "optimizer",
               "scheduler", "loss_normalizer", "rng_state", "config")
_DICT_KEYS = {"state_dict": (), "state_dict_ema": (), "ema": ("num_updates",),
              "optimizer": ("state", "param_groups"), "scheduler": ("last_epoch",),
              "loss_normalizer": ("value",), "rng_state": ("python", "numpy", "torch"),
              "config": ()}
_NUMPY_RNG_KEYS = ("bit_generator", "key", "pos", "has_gauss", "gauss")
_SCHEDULE_FIELDS = ("warmup_steps", "max_steps", "milestones")


@dataclass
class TrainState:
    """What the loop advances and checkpoints carry besides module/optimizer states."""
    epoch: int = 0          # epochs completed
    global_step: int = 0    # optimizer steps completed
    best_map: float = -1.0  # best validation average mAP so far (-1: none yet)
    best_epoch: int = 0     # the epoch that reached best_map (0: none yet)
    epoch_step: int = 0     # batches trained of epoch ``epoch + 1`` (a mid-epoch checkpoint)


@dataclass
class Trainable:
    """Everything a checkpoint saves and a resume restores."""
    model: nn.Module
    ema: ModelEma
    optimizer: Any
    scheduler: Any
    normalizer: Any                # LossNormalizer, or TaskNormalizers for several tasks
    state: TrainState = field(default_factory=TrainState)
    scaler: Optional[Any] = None   # torch.amp.GradScaler of fp16 training (saved when enabled)


def training_checkpoint(t: Trainable, cfg: Config, label_map: Mapping[int, str],
                        best_map: float) -> Dict[str, Any]:
    """The checkpoint dict of the current training state (``best_map`` as it is to be saved)."""
    return {
        "epoch": t.state.epoch, "global_step": t.state.global_step,
        "epoch_step": t.state.epoch_step,
        "state_dict": unwrap_model(t.model).state_dict(),
        "state_dict_ema": t.ema.module.state_dict(), "ema": t.ema.state_dict(),
        "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
        "loss_normalizer": t.normalizer.state_dict(), "rng_state": get_rng_state(),
        "config": cfg.to_dict(), "label_map": {int(k): str(v) for k, v in label_map.items()},
        "best_map": float(best_map), "best_epoch": int(t.state.best_epoch),
        **({"grad_scaler": t.scaler.state_dict()}
           if t.scaler is not None and t.scaler.is_enabled() else {}),
    }


def save_epoch_checkpoints(ckpt: Mapping[str, Any], folder: Path, periodic: bool,
                           best: bool) -> None:
    """Write the end-of-epoch checkpoint ``ckpt``: ``best.pth.tar`` first, then
    ``epoch_NNN.pth.tar``, so that a kill between the two writes never leaves a best older than
    the best validated epoch that has a checkpoint; an ``interrupted.pth.tar`` that this
    checkpoint supersedes is removed."""
    if best:
        save_checkpoint(ckpt, folder / BEST_NAME)
    if periodic:
        save_checkpoint(ckpt, folder / f"epoch_{int(ckpt['epoch']):03d}.pth.tar")
    if periodic or best:
        (folder / INTERRUPTED_NAME).unlink(missing_ok=True)


def stop_for_requeue(t: Trainable, cfg: Config, label_map: Mapping[int, str], folder: Path,
                     saved: Progress, why: str, rank: int, writer: Any) -> int:
    """End a run stopped by a signal (libs/training/signals.py): rank 0 writes
    ``interrupted.pth.tar`` unless the newest checkpoint written (``saved``) already holds this
    progress; returns :data:`EXIT_REQUEUE` for the process's exit status."""
    progress = (t.state.epoch, t.state.epoch_step)
    if rank == 0:
        if progress != saved:
            save_checkpoint(training_checkpoint(t, cfg, label_map, t.state.best_map),
                            folder / INTERRUPTED_NAME)
            kept = f"wrote {folder / INTERRUPTED_NAME}"
        else:
            kept = "the newest checkpoint already holds this state"
        log.warning("stopped by %s at %s (global step %d): %s; continue with the same command "
                    "and --resume auto (with --output) or --resume %s; exit status %d", why,
                    describe_progress(progress), t.state.global_step, kept, folder, EXIT_REQUEUE)
    writer.close()
    cleanup()
    return EXIT_REQUEUE


def structure_problems(ckpt: Mapping[str, Any]) -> List[str]:
    """What is missing or of the wrong type in a training checkpoint dict."""
    problems = [f"no '{k}'" for k in RESUME_KEYS if k not in ckpt]
    for k in ("epoch", "global_step", "epoch_step", "best_epoch"):
        v = ckpt.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            problems.append(f"'{k}' is {show_value(v)}, expected a count >= 0")
    for k, inner in _DICT_KEYS.items():
        if k not in ckpt:
            continue
        if not isinstance(ckpt[k], Mapping):
            problems.append(f"'{k}' is a {type(ckpt[k]).__name__}, expected a dict")
            continue
        problems += [f"'{k}' has no '{i}'" for i in inner if i not in ckpt[k]]
    rng = ckpt.get("rng_state")
    if isinstance(rng, Mapping) and isinstance(rng.get("numpy"), Mapping):
        problems += [f"'rng_state.numpy' has no '{i}'" for i in _NUMPY_RNG_KEYS
                     if i not in rng["numpy"]]
    if isinstance(rng, Mapping) and "torch" in rng and not isinstance(rng["torch"], torch.Tensor):
        problems.append("'rng_state.torch' is not a tensor")
    if not isinstance(ckpt.get("best_map", -1.0), (int, float)):
        problems.append(f"'best_map' is {show_value(ckpt.get('best_map'))}, expected a number")
    return problems


def check_resumable(ckpt: Mapping[str, Any], cfg: Config, path: str) -> Config:
    """A one-line error unless ``ckpt`` is a complete training checkpoint (every key and the
    structure inside it) of the same architecture as ``cfg``; returns its stored config. Checked
    before anything is written."""
    problems = structure_problems(ckpt)
    if problems:
        raise UserError(format_problems(problems, f"checkpoint cannot be resumed ({path}); "
                                                  f"expected an epoch_NNN.pth.tar written by "
                                                  f"train.py", limit=8))
    stored = checkpoint_config(ckpt, path)
    diffs = architecture_diff(stored, cfg)
    if diffs:
        raise UserError(format_problems(diffs, f"cannot resume with a different model ({path} vs "
                                               f"{cfg.source}; checkpoint vs config)"))
    return stored


def _shape(x: Any) -> Any:
    return list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _state_dict_problems(name: str, saved: Mapping[str, Any], model: Mapping[str, Any]) -> List[str]:
    missing = [k for k in model if k not in saved]
    extra = [k for k in saved if k not in model]
    out = []
    if missing:
        out.append(f"{name} lacks {len(missing)} tensors ({', '.join(missing[:3])})")
    if extra:
        out.append(f"{name} has {len(extra)} tensors the model does not ({', '.join(extra[:3])})")
    out += [f"{name}.{k}: shape {_shape(saved[k])} vs {_shape(v)} in the model"
            for k, v in model.items() if k in saved and _shape(saved[k]) != _shape(v)]
    return out


def _optimizer_problems(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> List[str]:
    groups = saved.get("param_groups")
    mine = optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(mine):
        return [f"optimizer: {len(groups) if isinstance(groups, list) else 'no'} parameter groups "
                f"vs {len(mine)} ({type(optimizer).__name__}: decay, no-decay)"]
    out = []
    params = []
    for i, (g, m) in enumerate(zip(groups, mine)):
        if not isinstance(g, Mapping) or len(g.get("params", ())) != len(m["params"]):
            out.append(f"optimizer group {i}: {len(g.get('params', ())) if isinstance(g, Mapping) else '?'}"
                       f" parameters vs {len(m['params'])}")
            continue
        keys = set(g) - {"params", "initial_lr"}
        want = set(m) - {"params", "initial_lr"}
        if keys != want:
            out.append(f"optimizer group {i}: settings {sorted(keys)} vs {sorted(want)} "
                       f"(another optimizer type?)")
        params += list(zip(g["params"], m["params"]))
    state = saved.get("state", {})
    for saved_id, param in params:
        for name, value in (state.get(saved_id) or {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                out.append(f"optimizer state '{name}' of parameter {saved_id}: shape "
                           f"{list(value.shape)} vs {list(param.shape)}")
                break
    return out


def check_states(t: Trainable, ckpt: Mapping[str, Any], path: str, iters_per_epoch: int,
                 rebuilds_schedule: bool = False) -> None:
    """A one-line error unless every state of ``ckpt`` loads into ``t``: weights (raw and EMA)
    against the model's tensors, optimizer groups and moments against its parameters, the
    loss normaliser, the schedule's length (unless ``rebuilds_schedule``) and the position in the
    epoch against ``iters_per_epoch``. Changes nothing."""
    model = unwrap_model(t.model).state_dict()
    problems = _state_dict_problems("state_dict", ckpt["state_dict"], model)
    problems += _state_dict_problems("state_dict_ema", ckpt["state_dict_ema"],
                                     t.ema.module.state_dict())
    problems += _optimizer_problems(ckpt["optimizer"], t.optimizer)
    mine_norm = t.normalizer.state_dict()
    if set(ckpt["loss_normalizer"]) != set(mine_norm):
        problems.append(f"loss_normalizer: keys {sorted(ckpt['loss_normalizer'])} vs "
                        f"{sorted(mine_norm)}")
    if not rebuilds_schedule:
        mine_sched = t.scheduler.state_dict()
        for k in _SCHEDULE_FIELDS:
            if k in mine_sched and ckpt["scheduler"].get(k) != mine_sched[k]:
                problems.append(f"schedule {k}: {show_value(ckpt['scheduler'].get(k))} in the "
                                f"checkpoint vs {show_value(mine_sched[k])} for this config "
                                f"({iters_per_epoch} iterations per epoch; did the training "
                                f"set change?)")
    step = int(ckpt.get("epoch_step", 0))
    if step > iters_per_epoch:
        problems.append(f"epoch_step {step} > {iters_per_epoch} iterations per epoch")
    if problems:
        raise UserError(format_problems(problems, f"checkpoint does not fit the model, optimizer or "
                                                  f"schedule of this config ({path})", limit=8))


def restore(t: Trainable, ckpt: Mapping[str, Any]) -> None:
    """Load a checked checkpoint (:func:`check_resumable`, :func:`check_states`) into ``t``
    (weights, EMA, optimiser, schedule, normaliser, progress and random states)."""
    unwrap_model(t.model).load_state_dict(ckpt["state_dict"])
    t.ema.module.load_state_dict(ckpt["state_dict_ema"])
    t.ema.load_state_dict(ckpt["ema"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.normalizer.load_state_dict(ckpt["loss_normalizer"])
    t.state = TrainState(epoch=int(ckpt["epoch"]), global_step=int(ckpt["global_step"]),
                         best_map=float(ckpt.get("best_map", -1.0)),
                         best_epoch=int(ckpt.get("best_epoch", 0)),
                         epoch_step=int(ckpt.get("epoch_step", 0)))
    if t.scaler is not None and "grad_scaler" in ckpt:
        t.scaler.load_state_dict(ckpt["grad_scaler"])
    set_rng_state(ckpt["rng_state"])
