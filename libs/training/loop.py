"""The training step and epoch, and validation during training (train.py).

Everything here works on one process or under torch.distributed (DDP); devices, logging and
checkpoints are the callers' business. One optimizer step (docs/numerics.md s.9.5) takes
``train.accum_steps`` micro-batches, each forwarded under ``train.amp``'s autocast; the losses and
the loss normaliser stay fp32, and the schedule, the EMA and the normaliser advance once per
optimizer step.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, Optional, Union

import torch
from torch import nn
from tqdm import tqdm

from libs.common.distributed import autocast, rank_and_world, unwrap_model
from libs.common.errors import UserError
from libs.config.schema import Config, TrainCfgConfig
from libs.config.tasks import task_values
from libs.evaluation.predict import predict_dataset, score_detections
from libs.evaluation.task_metrics import TaskMetrics
from libs.training.checkpointing import TrainState
from libs.training.tensorboard import TensorboardWriter, log_validation
from libs.modeling.assign import assign_targets
from libs.modeling.losses import LossNormalizer, detection_losses, per_video_nonfinite
from libs.modeling.multitask import TaskNormalizers, task_losses

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss; the message names epoch, iteration and videos."""


def to_device(batch: dict, device: torch.device) -> dict:
    """Move the tensors of a collated batch (feats, masks, segments, labels) to ``device``."""
    out = dict(batch)
    out["feats"] = batch["feats"].to(device, non_blocking=True)
    out["masks"] = batch["masks"].to(device, non_blocking=True)
    if batch.get("annotated") is not None:
        out["annotated"] = batch["annotated"].to(device)
    out["segments"] = [s.to(device) for s in batch["segments"]]
    out["labels"] = [lab.to(device) for lab in batch["labels"]]
    return out


def make_normalizer(cfg: Config) -> Union[LossNormalizer, TaskNormalizers]:
    """The loss normaliser of a run: one, or one per task (``train_cfg.init_loss_norm``,
    ``loss_norm_momentum``)."""
    tc = cfg.train_cfg
    if len(cfg.derived.tasks) > 1:
        return TaskNormalizers(cfg.derived.tasks, tc.init_loss_norm, tc.loss_norm_momentum)
    return LossNormalizer(tc.init_loss_norm, tc.loss_norm_momentum)


def compute_losses(outputs: dict, batch: dict, normalizer: Union[LossNormalizer, TaskNormalizers],
                   train_cfg: TrainCfgConfig, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Targets for every point of every level, then focal + DIoU losses (docs/numerics.md s.5-6);
    per task for a several-task ``model`` (``libs/modeling/multitask.py``). Call it outside
    autocast: the losses cast the head outputs to fp32."""
    layout = model.layout
    if layout.multi:
        return task_losses(outputs, batch, normalizer, train_cfg, layout, model.reg_per_task,
                           task_values(train_cfg.task_loss_weight, layout.tasks))
    points = torch.cat(outputs["points"], dim=0)  # (P, 4)
    cls_targets, reg_targets = assign_targets(
        points, batch["segments"], batch["labels"], layout.total_classes,
        train_cfg.center_sample, train_cfg.center_sample_radius)
    return detection_losses(
        outputs["cls_logits"], outputs["offsets"], outputs["fpn_masks"], cls_targets, reg_targets,
        normalizer, train_cfg.loss_weight, train_cfg.label_smoothing)


def steps_per_epoch(num_batches: int, accum_steps: int) -> int:
    """Optimizer steps of an epoch of ``num_batches`` micro-batches: ``num_batches //
    accum_steps`` (an incomplete last group is not trained on, like an incomplete batch)."""
    return num_batches // accum_steps


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of fp16 training; disabled (every call a pass-through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def _find_ddp(model: nn.Module) -> Optional[nn.parallel.DistributedDataParallel]:
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        inner = getattr(model, "_orig_mod", None)                  # torch.compile wrapper
        if not isinstance(inner, nn.Module):
            return None
        model = inner


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, ema,
                    normalizer: LossNormalizer, cfg: Config, state: TrainState,
                    device: torch.device, *, scaler: torch.amp.GradScaler,
                    writer: Optional[TensorboardWriter] = None,
                    show_progress: bool = True) -> Dict[str, float]:
    """One pass over ``loader``: :func:`steps_per_epoch` optimizer steps of
    ``cfg.train.accum_steps`` micro-batches each; returns the epoch's mean losses (per step).
    Reads ``cfg.train_cfg`` (targets, losses), ``cfg.opt.clip_grad_l2norm`` and ``cfg.train``
    (``amp``, ``accum_steps``, ``print_freq``); ``scaler`` from :func:`make_grad_scaler`.

    With ``accum_steps K > 1`` the step's gradient is the gradient of one batch of all K
    micro-batches: each micro-batch's loss is divided by the normaliser's value before the step,
    ``c``; after the K backward passes the normaliser is updated once with the step's positive
    count (summed over processes) to ``N`` and the gradients are multiplied by ``c / N``, which
    gives ``sum_k grad(loss sum_k) / N`` (docs/numerics.md s.9.5). Under DDP (P processes) the
    gradients are all-reduced only on the last micro-batch (``no_sync``) and each process
    back-propagates ``P x`` its loss, so that DDP's average is the gradient of the normalised sum
    over all processes: P x B x K videos train exactly like one process with batch P x B x K.

    Raises :class:`NonFiniteLossError` (before the optimizer step, so no weights are spoiled)
    when a loss is NaN/inf.
    """
    model.train()
    core = unwrap_model(model)
    clip, amp, accum = cfg.opt.clip_grad_l2norm, cfg.train.amp, cfg.train.accum_steps
    ddp = _find_ddp(model)
    # DDP averages the processes' gradients; each process's loss is its share of the global
    # normalised sum, so scaling by the process count makes the average that sum's gradient:
    # P processes x batch B equal one process x batch P*B (docs/numerics.md s.9.5)
    world = rank_and_world()[1] if ddp is not None else 1
    params = [p for p in model.parameters() if p.requires_grad]
    steps = steps_per_epoch(len(loader), accum)
    if steps * accum < len(loader):
        log.warning("%d micro-batch(es) of this epoch do not fill train.accum_steps %d: skipped",
                    len(loader) - steps * accum, accum)
    sums: Dict[str, float] = {}
    batches: Iterator[dict] = iter(loader)
    bar = tqdm(total=steps, desc=f"epoch {state.epoch + 1}", leave=False,
               disable=not show_progress, dynamic_ncols=True)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        # K == 1: the normaliser is updated inside the losses before it divides (as ever);
        # K > 1: micro-batches divide by the pre-step value c (momentum 1: update keeps it)
        c = normalizer.value if accum > 1 else 1.0    # accum > 1: one task (libs/config/checks.py)
        norm = normalizer if accum == 1 else LossNormalizer(c, 1.0, reduce_fn=lambda n: n)
        values: Dict[str, float] = {}
        num_pos = 0
        for k in range(accum):
            batch = to_device(next(batches), device)
            sync = ddp is None or k == accum - 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with autocast(amp, device):
                    outputs = model(batch["feats"], batch["masks"])
                losses = compute_losses(outputs, batch, norm, cfg.train_cfg, core)
                final = losses["final_loss"]
                if not torch.isfinite(final):
                    bad = per_video_nonfinite(outputs["cls_logits"], outputs["offsets"])
                    videos = [batch["video_ids"][i] for i in bad] or batch["video_ids"]
                    micro = f", micro-batch {k + 1}/{accum}" if accum > 1 else ""
                    raise NonFiniteLossError(
                        f"non-finite loss {final.item()} (epoch {state.epoch + 1}, iteration "
                        f"{step + 1}{micro}, videos {', '.join(videos)}): training stopped; check "
                        f"these videos' features; the last good checkpoint is kept")
                scaler.scale(final * world if world > 1 else final).backward()
            num_pos += int(losses["num_pos"])
            for name, v in losses.items():
                if name.endswith("loss"):
                    values[name] = values.get(name, 0.0) + v.detach().item()
        scaler.unscale_(optimizer)               # no-op unless fp16
        if accum > 1:
            factor = c / normalizer.update(num_pos)   # one update per step, global count
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], factor)
            values = {name: v * factor for name, v in values.items()}
        if clip > 0:
            nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(model)
        state.global_step += 1

        for name, v in values.items():
            sums[name] = sums.get(name, 0.0) + v
        lr = optimizer.param_groups[0]["lr"]
        bar.update(1)
        bar.set_postfix(loss=f"{values['final_loss']:.4f}", lr=f"{lr:.2e}")
        if writer is not None and state.global_step % cfg.train.print_freq == 0:
            writer.add_scalar("train/learning_rate", lr, state.global_step)
            for name, v in values.items():
                writer.add_scalar(f"train/{name}", v, state.global_step)
    bar.close()
    return {name: v / max(steps, 1) for name, v in sums.items()}


def validate(model: nn.Module, val_set, cfg: Config, device: torch.device, epoch: int,
             writer: TensorboardWriter) -> Optional[float]:
    """Score ``model`` (the EMA weights) on ``val_set`` after ``epoch`` epochs: every process
    predicts its share (``predict_dataset``, under ``cfg.train.amp``); rank 0 logs the mAP and
    writes TensorBoard and returns the average mAP; the other ranks return None."""
    detections = predict_dataset(model, val_set, cfg, device, amp=cfg.train.amp,
                                 show_progress=False)
    if detections is None:
        return None
    metrics = score_detections(detections, val_set)
    if isinstance(metrics, TaskMetrics):
        log.info("epoch %d validation (EMA weights): mean of the tasks' average mAPs %.2f%% | %s",
                 epoch, 100 * metrics.average_map, "; ".join(
                     f"{t} {100 * r.average_map:.2f}" for t, r in metrics.results.items()))
        writer.add_scalar("validation/average_mAP", metrics.average_map, epoch)
        for task, result in metrics.results.items():
            log_validation(writer, result, val_set.task_label_names[task], epoch,
                           prefix=f"validation_{task}")
        return metrics.average_map
    log.info("epoch %d validation (EMA weights): average mAP %.2f%% | %s", epoch,
             100 * metrics.average_map, " ".join(f"{t:.1f}:{100 * m:.2f}" for t, m in
                                                 zip(metrics.tiou_thresholds, metrics.map_per_tiou)))
    # the same video every epoch: the first of the split that has events
    shown = next((i for i, v in enumerate(val_set.videos) if v.num_events), 0)
    log_validation(writer, metrics, val_set.label_names, epoch,
                   (val_set.videos[shown], detections[shown]))
    return metrics.average_map


def prepare_model(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """The module the loop trains: ``model`` (on ``device``), ``torch.compile``-d when
    ``cfg.train.compile``, then wrapped in DistributedDataParallel when a process group of more
    than one process exists. Compiling inside DDP keeps ``no_sync`` a plain Python switch for
    gradient accumulation; checkpoints and the EMA see the plain module (``unwrap_model``)."""
    wrapped = model
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
        log.info("train.compile: the training model is compiled at its first step")
    if rank_and_world()[1] > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device] if device.type == "cuda" else None)
    return wrapped
