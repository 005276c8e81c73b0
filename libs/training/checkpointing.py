"""What a training checkpoint holds, and resuming from one.

``epoch_NNN.pth.tar`` = ``{epoch, global_step, state_dict, state_dict_ema, ema (bookkeeping),
optimizer, scheduler, loss_normalizer, rng_state, config (the resolved config), label_map,
best_map}``: self-describing (``Detector.from_checkpoint`` rebuilds the model from ``config``) and
enough to continue bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping

from torch import nn

from libs.common.distributed import unwrap_model
from libs.common.errors import UserError, format_problems
from libs.common.seed import get_rng_state, set_rng_state
from libs.config.compare import architecture_diff
from libs.config.schema import Config
from libs.modeling.detector import checkpoint_config
from libs.modeling.losses import LossNormalizer
from libs.training.ema import ModelEma

RESUME_KEYS = ("epoch", "global_step", "state_dict", "state_dict_ema", "ema", "optimizer",
               "scheduler", "loss_normalizer", "rng_state", "config")


@dataclass
class TrainState:
    """What the loop advances and checkpoints carry besides module/optimizer states."""
    epoch: int = 0          # epochs completed
    global_step: int = 0    # optimizer steps completed
    best_map: float = -1.0  # best validation average mAP so far (-1: none yet)


@dataclass
class Trainable:
    """Everything a checkpoint saves and a resume restores."""
    model: nn.Module
    ema: ModelEma
    optimizer: Any
    scheduler: Any
    normalizer: LossNormalizer
    state: TrainState = field(default_factory=TrainState)


def training_checkpoint(t: Trainable, cfg: Config, label_map: Mapping[int, str],
                        best_map: float) -> Dict[str, Any]:
    """The checkpoint dict of the current training state (``best_map`` as it is to be saved)."""
    return {
        "epoch": t.state.epoch, "global_step": t.state.global_step,
        "state_dict": unwrap_model(t.model).state_dict(),
        "state_dict_ema": t.ema.module.state_dict(), "ema": t.ema.state_dict(),
        "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
        "loss_normalizer": t.normalizer.state_dict(), "rng_state": get_rng_state(),
        "config": cfg.to_dict(), "label_map": {int(k): str(v) for k, v in label_map.items()},
        "best_map": float(best_map),
    }


def check_resumable(ckpt: Mapping[str, Any], cfg: Config, path: str) -> None:
    """A one-line error unless ``ckpt`` is a training checkpoint of the same architecture as
    ``cfg`` (checked before anything is written)."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"checkpoint cannot be resumed ({path}): it lacks {', '.join(missing)}; "
                        f"expected an epoch_NNN.pth.tar written by train.py")
    diffs = architecture_diff(checkpoint_config(ckpt, path), cfg)
    if diffs:
        raise UserError(format_problems(diffs, f"cannot resume with a different model ({path} vs "
                                               f"{cfg.source}; checkpoint vs config)"))


def restore(t: Trainable, ckpt: Mapping[str, Any]) -> None:
    """Load a :func:`check_resumable` checkpoint into ``t`` (weights, EMA, optimiser, schedule,
    normaliser, progress and random states)."""
    unwrap_model(t.model).load_state_dict(ckpt["state_dict"])
    t.ema.module.load_state_dict(ckpt["state_dict_ema"])
    t.ema.load_state_dict(ckpt["ema"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.normalizer.load_state_dict(ckpt["loss_normalizer"])
    t.state = TrainState(epoch=int(ckpt["epoch"]), global_step=int(ckpt["global_step"]),
                         best_map=float(ckpt.get("best_map", -1.0)))
    set_rng_state(ckpt["rng_state"])
