"""Train a temporal localisation detector.

    python train.py CONFIG [--output NAME] [--resume CKPT] [--opt KEY=VALUE ...] [--device cpu|cuda]

Multi-GPU: ``torchrun --nproc_per_node N train.py CONFIG`` (torch.distributed, one process per GPU).
Outputs go to ``<output_folder>/<config stem>_<NAME or timestamp>/`` (docs/numerics.md s.10.1).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Optional

from torch.nn.parallel import DistributedDataParallel

from libs.common.checkpoints import load_checkpoint, save_checkpoint
from libs.common.distributed import add_device_arg, cleanup, init_distributed, resolve_device
from libs.common.errors import UserError, run_cli
from libs.common.logs import setup_logging
from libs.common.threads import add_threads_arg, apply_threads
from libs.common.seed import fix_random_seed
from libs.config import add_config_args, dump_config, load_config
from libs.datasets import PerceptionDataset, make_loader, set_loader_epoch
from libs.evaluation.predict import predict_dataset, score_detections
from libs.modeling import Detector
from libs.modeling.detector import count_parameters
from libs.modeling.losses import LossNormalizer
from libs.training.checkpointing import Trainable, check_resumable, restore, training_checkpoint
from libs.training.ema import ModelEma
from libs.training.loop import train_one_epoch
from libs.training.optim import make_optimizer
from libs.training.run_dir import experiment_dir, prepare_experiment_dir
from libs.training.scheduler import make_scheduler, num_epochs
from libs.training.tensorboard import TensorboardWriter, log_validation

log = logging.getLogger("train")


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config (see README: configuration)")
    p.add_argument("--output", default=None, help="experiment name suffix (default: a timestamp)")
    p.add_argument("--resume", default=None, help="checkpoint to continue from (epoch_NNN.pth.tar)")
    add_device_arg(p)
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    add_config_args(p)
    return p.parse_args(argv)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    setup_logging(None, rank=int(os.environ.get("RANK", "0")))  # console only until the run folder exists
    cfg = load_config(args.config, args.opt or [])
    apply_threads(args.threads, cfg.loader.num_workers)
    device_name = resolve_device(args.device)
    dist = init_distributed(device_name)
    device = dist.device

    resume_ckpt = load_checkpoint(args.resume) if args.resume else None
    if resume_ckpt is not None:
        check_resumable(resume_ckpt, cfg, args.resume)
    fix_random_seed(cfg.seed)

    # ---------------------------------------------------------------- data (checked before any output)
    train_set = PerceptionDataset.from_config(cfg, cfg.dataset.train_split, is_training=True)
    model = Detector.from_config(cfg).to(device)
    loader = make_loader(train_set, batch_size=cfg.loader.batch_size,
                         num_workers=cfg.loader.num_workers, is_training=True, seed=cfg.seed,
                         max_seq_len=cfg.dataset.max_seq_len,
                         max_div_factor=model.max_div_factor, rank=dist.rank,
                         world_size=dist.world_size)
    if len(loader) == 0:
        raise UserError(f"training set too small (dataset.train_split {list(cfg.dataset.train_split)}): "
                        f"{len(train_set)} videos for batch size {cfg.loader.batch_size} x "
                        f"{dist.world_size} processes")
    val_set = None
    if cfg.train.eval_freq > 0:
        val_set = PerceptionDataset.from_config(cfg, cfg.dataset.val_split, is_training=False)

    # ---------------------------------------------------------------- output folder and logging
    if args.resume and args.output is None:
        exp = Path(args.resume).resolve().parent
    else:
        exp = experiment_dir(cfg.output_folder, args.config, args.output)
    if dist.rank == 0:
        prepare_experiment_dir(exp, resume=resume_ckpt is not None)
        setup_logging(exp / "train.log", rank=dist.rank)
        if (exp / "config.yaml").exists():
            log.info("resuming: %s replaced by the config of this run", exp / "config.yaml")
        dump_config(cfg, exp / "config.yaml")
    log.info("experiment folder: %s", exp)

    # ---------------------------------------------------------------- model, optimiser, schedule
    log.info("model: %s backbone, %s parameters", cfg.model.backbone, f"{count_parameters(model):,}")
    optimizer = make_optimizer(model, cfg.opt)
    run = Trainable(model=model, ema=ModelEma(model, decay=cfg.train.ema_decay,
                                            warmup=cfg.train.ema_warmup),
                  optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg.opt, len(loader)),
                  normalizer=LossNormalizer(cfg.train_cfg.init_loss_norm,
                                            cfg.train_cfg.loss_norm_momentum))
    if resume_ckpt is not None:
        restore(run, resume_ckpt)
        log.info("resumed from %s (epoch %d)", args.resume, run.state.epoch)
    if dist.world_size > 1:
        run.model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    writer = TensorboardWriter(exp / "logs", rank=dist.rank)
    max_epochs = num_epochs(cfg.opt)
    state = run.state

    # ---------------------------------------------------------------- loop
    log.info("training %d epochs x %d iterations on %s (%d process%s)", max_epochs, len(loader),
             device, dist.world_size, "es" if dist.world_size > 1 else "")
    while state.epoch < max_epochs:
        set_loader_epoch(loader, state.epoch)
        t0 = time.time()
        losses = train_one_epoch(run.model, loader, run.optimizer, run.scheduler, run.ema, run.normalizer, cfg,
                                 state, device, writer,
                                 show_progress=not args.no_progress and dist.rank == 0)
        state.epoch += 1
        log.info("epoch %d/%d: %s, lr %.3e, %.1f s", state.epoch, max_epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                 optimizer.param_groups[0]["lr"], time.time() - t0)
        last = state.epoch == max_epochs
        is_eval = val_set is not None and (state.epoch % cfg.train.eval_freq == 0 or last)
        avg_map = None
        if is_eval and dist.rank == 0:
            detections = predict_dataset(run.ema.module, val_set, cfg, device, show_progress=False)
            metrics = score_detections(detections, val_set)
            avg_map = metrics.average_map
            log.info("epoch %d validation (EMA weights): average mAP %.2f%% | %s", state.epoch,
                     100 * avg_map, " ".join(f"{t:.1f}:{100 * m:.2f}" for t, m in
                                             zip(metrics.tiou_thresholds, metrics.map_per_tiou)))
            # the same video every epoch: the first of the split that has events
            shown = next((i for i, v in enumerate(val_set.videos) if v.num_events), 0)
            log_validation(writer, metrics, val_set.label_names, state.epoch,
                           (val_set.videos[shown], detections[shown]))
        periodic = state.epoch % cfg.train.ckpt_freq == 0 or last
        is_best = avg_map is not None and avg_map > state.best_map
        if dist.rank == 0 and (periodic or is_best):
            if is_best:
                state.best_map = avg_map
            ckpt = training_checkpoint(run, cfg, train_set.label_names, state.best_map)
            if periodic:
                save_checkpoint(ckpt, exp / f"epoch_{state.epoch:03d}.pth.tar")
            if is_best:
                save_checkpoint(ckpt, exp / "best.pth.tar")
                log.info("new best average mAP %.2f%% at epoch %d -> best.pth.tar", 100 * avg_map,
                         state.epoch)
    writer.close()
    log.info("done: %s", exp)
    cleanup()
    return 0


if __name__ == "__main__":
    run_cli(main)
