"""Train a temporal localisation detector.

    python train.py CONFIG [--output NAME] [--resume CKPT|RUN_DIR|auto] [--resume-override KEY ...]
                    [--opt KEY=VALUE ...] [--device cpu|cuda]

Multi-GPU: ``torchrun --nproc_per_node N train.py CONFIG`` (torch.distributed, one process per GPU).
Outputs go to ``<output_folder>/<config stem>_<NAME or timestamp>/`` (docs/numerics.md s.10.1),
a folder this run holds locked. A resume is checked completely before anything is written
(libs/training/resume.py). SIGTERM/SIGINT stop at the next step with ``interrupted.pth.tar`` and
exit status 75 (requeue-safe: rerun with ``--resume auto``; libs/training/signals.py).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from typing import Optional

from libs.common.distributed import (add_device_arg, check_amp, cleanup, init_distributed,
                                     resolve_device)
from libs.common.errors import UserError, run_cli
from libs.common.logs import setup_logging
from libs.common.threads import add_threads_arg, apply_threads
from libs.common.seed import fix_random_seed
from libs.config import add_config_args, dump_config, load_config
from libs.datasets import PerceptionDataset, make_loader, set_loader_epoch
from libs.datasets.loader import skip_loader_batches
from libs.modeling import Detector
from libs.modeling.detector import count_parameters
from libs.training.checkpointing import (Trainable, check_resumable, check_states, restore,
                                         save_epoch_checkpoints, stop_for_requeue,
                                         training_checkpoint)
from libs.training.ema import ModelEma, warn_if_ema_immature
from libs.training.loop import (make_grad_scaler, make_normalizer, prepare_model, steps_per_epoch,
                                 train_one_epoch, validate)
from libs.training.optim import make_optimizer
from libs.training.resume import (OVERRIDABLE_KEYS, check_config_changes, claim_for_run,
                                  find_resume, rebuild_schedule, repair_run_folder)
from libs.training.run_dir import experiment_dir
from libs.training.scheduler import make_scheduler, num_epochs
from libs.training.signals import StopSignals, StopTraining, StoppableLoader
from libs.training.tensorboard import TensorboardWriter

log = logging.getLogger("train")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit 2 through run_cli)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"bad arguments ({self.prog}): {message}; see --help")


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = _Parser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config (see README: configuration)")
    p.add_argument("--output", default=None, help="experiment name suffix (default: a timestamp)")
    p.add_argument("--resume", default=None, metavar="CKPT|RUN_DIR|auto",
                   help="continue from a checkpoint, from the newest loadable checkpoint of a run "
                        "folder, or (auto, with --output NAME) of that run if it has one")
    p.add_argument("--resume-override", nargs="+", default=[], metavar="KEY",
                   help="config keys that may differ from the checkpoint's on resume (patterns "
                        f"allowed): {', '.join(OVERRIDABLE_KEYS)}; the schedule keys rebuild the "
                        "learning-rate schedule at the current step")
    add_device_arg(p)
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    add_config_args(p)
    return p.parse_args(argv)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as on_exit:   # signal handlers and the run folder's lock
        return train(args, on_exit)


def train(args: argparse.Namespace, on_exit: contextlib.ExitStack) -> int:
    stop = on_exit.enter_context(StopSignals())   # first SIGTERM/SIGINT: stop at a step boundary
    setup_logging(None, rank=int(os.environ.get("RANK", "0")))  # console only until the run folder exists
    cfg = load_config(args.config, args.opt or [])
    apply_threads(args.threads, cfg.loader.num_workers)
    device_name = resolve_device(args.device)
    dist = init_distributed(device_name, cfg.train.dist_timeout)
    device = dist.device
    check_amp(cfg.train.amp, device, "train.amp")

    named_dir = experiment_dir(cfg.output_folder, args.config, args.output) if args.output else None
    resume = find_resume(args.resume, named_dir)   # None: a new run
    if resume is not None:   # checked in full before anything is written
        stored = check_resumable(resume.ckpt, cfg, str(resume.path))
        changes = check_config_changes(stored, cfg, args.resume_override, str(resume.path))
    elif args.resume_override and args.resume is None:
        raise UserError("--resume-override without a checkpoint to resume (command line)")
    fix_random_seed(cfg.seed)

    # ---------------------------------------------------------------- data (checked before any output)
    train_set = PerceptionDataset.from_config(cfg, cfg.dataset.train_split, is_training=True)
    model = Detector.from_config(cfg).to(device)
    loader = make_loader(train_set, batch_size=cfg.loader.batch_size,
                         num_workers=cfg.loader.num_workers, is_training=True, seed=cfg.seed,
                         max_seq_len=cfg.dataset.max_seq_len,
                         max_div_factor=model.max_div_factor, rank=dist.rank,
                         world_size=dist.world_size)
    steps = steps_per_epoch(len(loader), cfg.train.accum_steps)   # optimizer steps per epoch
    if steps == 0:
        raise UserError(f"training set too small (dataset.train_split {list(cfg.dataset.train_split)}): "
                        f"{len(train_set)} videos for batch size {cfg.loader.batch_size} x "
                        f"{dist.world_size} processes x train.accum_steps {cfg.train.accum_steps}")
    val_set = None
    if cfg.train.eval_freq > 0:
        val_set = PerceptionDataset.from_config(cfg, cfg.dataset.val_split, is_training=False)

    # ---------------------------------------------------------------- model, optimiser, schedule
    log.info("model: %s backbone, %s parameters", cfg.model.backbone, f"{count_parameters(model):,}")
    optimizer = make_optimizer(model, cfg.opt)
    scaler = make_grad_scaler(cfg.train.amp, device)
    run = Trainable(model=model, ema=ModelEma(model, decay=cfg.train.ema_decay,
                                            warmup=cfg.train.ema_warmup),
                  optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg.opt, steps),
                  normalizer=make_normalizer(cfg), scaler=scaler)
    max_epochs = num_epochs(cfg.opt)
    schedule_note = None
    if resume is not None:   # every state is checked against this model before any is loaded
        check_states(run, resume.ckpt, str(resume.path), steps, changes.rebuilds_schedule)
        restore(run, resume.ckpt)
        if changes.rebuilds_schedule:
            schedule_note = rebuild_schedule(run, cfg.opt, steps, changes.overridden)
        if run.state.epoch >= max_epochs:
            log.info("nothing to train: %s is at epoch %d of %d (to train longer: --opt "
                     "opt.epochs=N --resume-override opt.epochs)", resume.path, run.state.epoch,
                     max_epochs)
            return 0

    # ---------------------------------------------------------------- output folder and logging
    if resume is not None and args.output is None:
        exp = resume.path.resolve().parent
    else:
        exp = named_dir or experiment_dir(cfg.output_folder, args.config, None)
    if dist.rank == 0:   # claimed (created, locked) only now: a failed check leaves nothing behind
        folder = on_exit.enter_context(claim_for_run(exp, resume, unique=named_dir is None and
                                                     resume is None))
        exp = folder.path
        setup_logging(exp / "train.log", rank=dist.rank)
        if folder.removed_temps:
            log.info("removed %d stale temp file(s) of an interrupted write from %s",
                     folder.removed_temps, exp)
        if (exp / "config.yaml").exists():
            log.info("resuming: %s replaced by the config of this run", exp / "config.yaml")
        dump_config(cfg, exp / "config.yaml")
        if resume is not None:
            log.info("resumed from %s (epoch %d%s)", resume.path, resume.progress[0],
                     f" + {resume.progress[1]} iterations" if resume.progress[1] else "")
            if schedule_note:
                log.info(schedule_note)
            repair_run_folder(exp, resume, cfg.train.ckpt_freq, max_epochs)
    log.info("experiment folder: %s", exp)
    run.model = prepare_model(model, cfg, device)   # train.compile, DDP
    writer = TensorboardWriter(exp / "logs", rank=dist.rank)
    state = run.state
    batches = StoppableLoader(loader, stop, cfg.train.accum_steps)   # raises StopTraining
    saved = resume.progress if resume is not None else (0, 0)   # of the newest checkpoint written

    # ---------------------------------------------------------------- loop
    log.info("training %d epochs x %d iterations on %s (%d process%s), effective batch %d (%d x %d "
             "processes x train.accum_steps %d), train.amp %s", max_epochs, steps, device,
             dist.world_size, "es" if dist.world_size > 1 else "",
             cfg.loader.batch_size * dist.world_size * cfg.train.accum_steps, cfg.loader.batch_size,
             dist.world_size, cfg.train.accum_steps, cfg.train.amp)
    while state.epoch < max_epochs:
        set_loader_epoch(loader, state.epoch)
        skip_loader_batches(loader, state.epoch_step * cfg.train.accum_steps)   # mid-epoch resume
        t0 = time.time()
        try:
            losses = train_one_epoch(run.model, batches, run.optimizer, run.scheduler, run.ema, run.normalizer, cfg,
                                     state, device, scaler=scaler, writer=writer,
                                     show_progress=not args.no_progress and dist.rank == 0)
        except StopTraining as why:   # SIGTERM/SIGINT: the steps begun are finished
            state.epoch_step += batches.steps_done
            return stop_for_requeue(run, cfg, train_set.label_names, exp, saved, str(why),
                                    dist.rank, writer)
        state.epoch_step = 0
        state.epoch += 1
        log.info("epoch %d/%d: %s, lr %.3e, %.1f s", state.epoch, max_epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                 optimizer.param_groups[0]["lr"], time.time() - t0)
        last = state.epoch == max_epochs
        is_eval = val_set is not None and (state.epoch % cfg.train.eval_freq == 0 or last)
        avg_map = None
        if is_eval:   # every process predicts its share; rank 0 scores (avg_map None elsewhere)
            if dist.rank == 0:
                warn_if_ema_immature(run.ema.state_dict(), f"validation after epoch {state.epoch}")
            avg_map = validate(run.ema.module, val_set, cfg, device, state.epoch, writer)
        periodic = state.epoch % cfg.train.ckpt_freq == 0 or last
        is_best = avg_map is not None and avg_map > state.best_map
        if is_best:
            state.best_map, state.best_epoch = avg_map, state.epoch
        if dist.rank == 0 and (periodic or is_best):   # best.pth.tar first (crash-consistent)
            ckpt = training_checkpoint(run, cfg, train_set.label_names, state.best_map)
            save_epoch_checkpoints(ckpt, exp, periodic=periodic, best=is_best)
            if is_best:
                log.info("new best average mAP %.2f%% at epoch %d -> best.pth.tar", 100 * avg_map,
                         state.epoch)
        if periodic or is_best:
            saved = (state.epoch, 0)
        if not last and stop.agreed():   # a signal during validation or the checkpoint writes
            return stop_for_requeue(run, cfg, train_set.label_names, exp, saved,
                                    stop.signal_name or "a stop on another process", dist.rank,
                                    writer)
    writer.close()
    log.info("done: %s", exp)
    cleanup()
    return 0


if __name__ == "__main__":
    run_cli(main)
