"""The training step and epoch (train.py).

Everything here works on one process or under torch.distributed (DDP); devices, logging and
checkpoints are the callers' business.
"""
from __future__ import annotations

import logging
from typing import Dict

import torch
from torch import nn
from tqdm import tqdm

from libs.common.distributed import unwrap_model
from libs.common.errors import UserError
from libs.config.schema import Config, TrainCfgConfig
from libs.training.checkpointing import TrainState
from libs.modeling.assign import assign_targets
from libs.modeling.losses import LossNormalizer, detection_losses, per_video_nonfinite

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss; the message names epoch, iteration and videos."""


def to_device(batch: dict, device: torch.device) -> dict:
    """Move the tensors of a collated batch (feats, masks, segments, labels) to ``device``."""
    out = dict(batch)
    out["feats"] = batch["feats"].to(device, non_blocking=True)
    out["masks"] = batch["masks"].to(device, non_blocking=True)
    out["segments"] = [s.to(device) for s in batch["segments"]]
    out["labels"] = [lab.to(device) for lab in batch["labels"]]
    return out


def compute_losses(outputs: dict, batch: dict, normalizer: LossNormalizer, train_cfg: TrainCfgConfig,
                   num_classes: int) -> Dict[str, torch.Tensor]:
    """Targets for every point of every level, then focal + DIoU losses (docs/numerics.md s.5-6)."""
    points = torch.cat(outputs["points"], dim=0)  # (P, 4)
    cls_targets, reg_targets = assign_targets(
        points, batch["segments"], batch["labels"], num_classes,
        train_cfg.center_sample, train_cfg.center_sample_radius)
    return detection_losses(
        outputs["cls_logits"], outputs["offsets"], outputs["fpn_masks"], cls_targets, reg_targets,
        normalizer, train_cfg.loss_weight, train_cfg.label_smoothing)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, ema,
                    normalizer: LossNormalizer, cfg: Config, state: TrainState,
                    device: torch.device, writer=None, show_progress: bool = True) -> Dict[str, float]:
    """One pass over ``loader``; returns the epoch's mean losses. Reads ``cfg.train_cfg``
    (targets, losses), ``cfg.opt.clip_grad_l2norm`` and ``cfg.train.print_freq``.

    Raises :class:`NonFiniteLossError` (before the optimizer step, so no weights are spoiled)
    when a loss is NaN/inf.
    """
    model.train()
    num_classes = unwrap_model(model).num_classes
    clip = cfg.opt.clip_grad_l2norm
    print_freq = cfg.train.print_freq
    sums: Dict[str, float] = {}
    count = 0
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", leave=False, disable=not show_progress,
               dynamic_ncols=True)
    for it, batch in enumerate(bar):
        batch = to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        outputs = model(batch["feats"], batch["masks"])
        losses = compute_losses(outputs, batch, normalizer, cfg.train_cfg, num_classes)
        final = losses["final_loss"]
        if not torch.isfinite(final):
            bad = per_video_nonfinite(outputs["cls_logits"], outputs["offsets"])
            videos = [batch["video_ids"][i] for i in bad] or batch["video_ids"]
            raise NonFiniteLossError(
                f"non-finite loss {final.item()} (epoch {state.epoch + 1}, iteration {it + 1}, "
                f"videos {', '.join(videos)}): training stopped; check these videos' features; the "
                f"last good checkpoint is kept")
        final.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        state.global_step += 1

        values = {k: v.detach().item() for k, v in losses.items() if k.endswith("loss")}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        lr = optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{values['final_loss']:.4f}", lr=f"{lr:.2e}")
        if writer is not None and state.global_step % print_freq == 0:
            writer.add_scalar("train/learning_rate", lr, state.global_step)
            for k, v in values.items():
                writer.add_scalar(f"train/{k}", v, state.global_step)
    bar.close()
    return {k: v / max(count, 1) for k, v in sums.items()}
