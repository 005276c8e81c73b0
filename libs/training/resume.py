"""Which checkpoint ``--resume`` continues from, and which config changes a resume accepts.

``--resume`` takes a checkpoint file, a run folder (its newest loadable checkpoint) or ``auto``
(the newest loadable checkpoint of the run folder that ``--output NAME`` names; none there: a new
run). The log says which file was chosen and why others were skipped.

The config of a resumed run must equal the checkpoint's, key by key, except for
:data:`FREE_KEYS` (they cannot change the weights: workers, logging, checkpoint and validation
frequency, where the loop stops) and the keys named with ``--resume-override KEY ...``, which must
match :data:`OVERRIDABLE_KEYS`. Overriding a key of :data:`SCHEDULE_KEYS` rebuilds the
learning-rate schedule from the new config and continues it at the current step, as if the run
had been configured so from the start (:func:`rebuild_schedule`; the log shows the learning rate
before and after). The architecture never changes on resume (``check_resumable``).
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from libs.common.checkpoints import load_checkpoint, save_checkpoint
from libs.common.errors import UserError, format_problems
from libs.config.schema import Config, OptConfig
from libs.config.spec import show_value
from libs.training.checkpointing import Trainable, structure_problems
from libs.training.run_dir import (BEST_NAME, Progress, RunFolder, check_fresh_folder,
                                   check_resume_target, claim_run_dir, progress_of, run_checkpoints)
from libs.training.scheduler import make_scheduler, num_epochs, warmup_epochs

log = logging.getLogger(__name__)

FREE_KEYS = ("output_folder", "loader.num_workers", "loader.eval_batch_size", "dataset.cache",
             "dataset.cache_max_gb",
             "train.print_freq", "train.ckpt_freq", "train.eval_freq", "train.dist_timeout",
             "opt.early_stop_epochs", "test_cfg.nms.backend")
SCHEDULE_KEYS = ("opt.epochs", "opt.learning_rate", "opt.eta_min", "opt.schedule_steps",
                 "opt.schedule_gamma")
OVERRIDABLE_KEYS = SCHEDULE_KEYS + ("dataset.annotation_file", "dataset.modalities.*.path",
                                    "dataset.val_split", "test_cfg.*", "train.compile")


@dataclass
class ResumeSource:
    """The checkpoint a run continues from: its path, contents, progress and the newer files
    that could not be loaded (skipped by a folder or ``auto`` resume)."""
    path: Path
    ckpt: Dict[str, Any]
    skipped: List[Path] = field(default_factory=list)

    @property
    def progress(self) -> Progress:
        return progress_of(self.ckpt)


def newest_resumable(folder: Path) -> Tuple[Optional[ResumeSource], List[str]]:
    """The newest checkpoint of ``folder`` that loads and has every training key, with the
    reasons the newer ones were skipped (``'epoch_004.pth.tar: <why>'``)."""
    reasons: List[str] = []
    skipped: List[Path] = []
    for _, path in run_checkpoints(folder):
        try:
            ckpt = load_checkpoint(path)
        except UserError as err:
            reasons.append(f"{path.name}: {err}")
            skipped.append(path)
            continue
        problems = structure_problems(ckpt)
        if problems:
            reasons.append(f"{path.name}: not a complete training checkpoint ({'; '.join(problems[:3])})")
            skipped.append(path)
            continue
        return ResumeSource(path, ckpt, skipped), reasons
    return None, reasons


def find_resume(arg: Optional[str], auto_folder: Optional[Path]) -> Optional[ResumeSource]:
    """Resolve ``--resume``: None (a new run), ``auto`` (``auto_folder``'s newest loadable
    checkpoint, None if it has none), a run folder (its newest loadable checkpoint) or a file."""
    if arg is None:
        return None
    if arg == "auto":
        if auto_folder is None:
            raise UserError("--resume auto (command line): expected --output NAME too, the run "
                            "to continue (or pass the run folder: --resume RUN_DIR)")
        if not auto_folder.is_dir() or not run_checkpoints(auto_folder):
            log.info("--resume auto: no checkpoint in %s yet: starting a new run", auto_folder)
            return None
        folder = auto_folder
    elif Path(arg).is_dir():
        folder = Path(arg)
    else:
        return ResumeSource(Path(arg), load_checkpoint(arg))
    source, reasons = newest_resumable(folder)
    for why in reasons:
        log.warning("--resume %s: skipped %s", arg, why)
    if source is None:
        raise UserError(format_problems(reasons or ["no epoch_NNN.pth.tar, best.pth.tar or "
                                                    "interrupted.pth.tar"],
                                        f"no loadable checkpoint in the run folder ({folder})",
                                        limit=4))
    log.info("--resume %s: continuing from %s (epoch %d%s), the newest loadable checkpoint of %s",
             arg, source.path, source.progress[0],
             f" + {source.progress[1]} iterations" if source.progress[1] else "", folder)
    return source


_ABSENT = object()   # a key only one of two configs has (a modality more or less)


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted keys of a config dict; lists of sections (modalities) are indexed."""
    if isinstance(d, dict):
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


def config_changes(stored: Config, cfg: Config) -> List[Tuple[str, Any, Any]]:
    """``(key, checkpoint value, config value)`` for every key (derived values aside) where the
    config of a resumed run differs from the checkpoint's."""
    a, b = stored.to_dict(), cfg.to_dict()
    a.pop("derived", None)
    b.pop("derived", None)
    fa, fb = _flatten(a), _flatten(b)
    return [(k, fa.get(k, _ABSENT), fb.get(k, _ABSENT)) for k in sorted(set(fa) | set(fb))
            if fa.get(k, _ABSENT) != fb.get(k, _ABSENT)]


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


@dataclass
class ConfigChanges:
    """What a resume changes: keys logged as harmless, keys applied by ``--resume-override``."""
    free: List[str]
    overridden: List[str]

    @property
    def rebuilds_schedule(self) -> bool:
        return any(k in SCHEDULE_KEYS for k in self.overridden)


def check_config_changes(stored: Config, cfg: Config, overrides: Sequence[str],
                         path: str) -> ConfigChanges:
    """Every difference between the checkpoint's config and ``cfg`` must be a free key or one
    named in ``overrides`` (patterns allowed, each within :data:`OVERRIDABLE_KEYS`); else one
    UserError naming each differing key with both values."""
    bad_patterns = [p for p in overrides if not any(fnmatch.fnmatchcase(k, p) or
                                                    fnmatch.fnmatchcase(p, k) for k in OVERRIDABLE_KEYS)]
    if bad_patterns:
        raise UserError(f"--resume-override {' '.join(bad_patterns)} (command line): these keys "
                        f"cannot change on resume; allowed: {', '.join(OVERRIDABLE_KEYS)} (any "
                        f"other change needs a new run)")
    def shown(v: Any) -> str:
        return "absent" if v is _ABSENT else show_value(v)

    free, overridden, refused = [], [], []
    for key, old, new in config_changes(stored, cfg):
        text = f"{key}: {shown(old)} vs {shown(new)}"
        if _matches(key, FREE_KEYS):
            free.append(text)
        elif _matches(key, overrides) and _matches(key, OVERRIDABLE_KEYS):
            overridden.append(key)
            log.info("--resume-override %s", text.replace(" vs ", " (checkpoint) -> ", 1))
        else:
            refused.append((key, text))
    if refused:
        allowed = [k for k, _ in refused if _matches(k, OVERRIDABLE_KEYS)]
        hint = (f"to apply them pass --resume-override {' '.join(allowed)}" if len(allowed) ==
                len(refused) else f"keys that may change on resume (--resume-override KEY ...): "
                                  f"{', '.join(OVERRIDABLE_KEYS)}; for others start a new run")
        raise UserError(format_problems(
            [t for _, t in refused], f"config differs from the checkpoint's ({path} vs "
                                     f"{cfg.source}; checkpoint vs config; {hint})"))
    for text in free:
        log.info("resume: %s (cannot change the weights; taken from this config)", text)
    unused = [p for p in overrides if not any(fnmatch.fnmatchcase(k, p) for k in overridden)]
    if unused:
        log.warning("--resume-override %s: the config does not change these keys", " ".join(unused))
    return ConfigChanges(free=free, overridden=overridden)


def rebuild_schedule(t: Trainable, opt: OptConfig, steps_per_epoch: int,
                     overridden: Sequence[str]) -> str:
    """Replace ``t.scheduler`` (restored from a checkpoint) by the schedule of ``opt``, continued
    at the restored step (as if the run had been configured with ``opt`` from the start), with
    each group's peak rate set to ``opt.learning_rate``. Returns the log line saying how."""
    step = int(t.scheduler.last_epoch)
    old_lr = t.optimizer.param_groups[0]["lr"]
    for group in t.optimizer.param_groups:
        group["initial_lr"] = opt.learning_rate
        group["lr"] = opt.learning_rate
    scheduler = make_scheduler(t.optimizer, opt, steps_per_epoch)
    scheduler.last_epoch = step
    lrs = scheduler.get_lr()
    for group, lr in zip(t.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    t.scheduler = scheduler
    return (f"--resume-override {' '.join(overridden)}: learning-rate schedule rebuilt from this "
            f"config ({opt.schedule_type}, {opt.epochs} epochs + {warmup_epochs(opt)} warmup x "
            f"{steps_per_epoch} steps, peak {opt.learning_rate:g}) and continued at step {step} "
            f"as if the run had been configured so from the start: lr {old_lr:.3e} -> "
            f"{lrs[0]:.3e}; {num_epochs(opt)} epochs in all")


def repair_run_folder(folder: Path, source: ResumeSource, ckpt_freq: int, max_epochs: int) -> None:
    """After a resume from ``source`` into its run folder, write what a kill may have kept from
    being written: the periodic ``epoch_NNN.pth.tar`` of an end-of-epoch ``source`` (resumed
    from ``best.pth.tar`` or ``interrupted.pth.tar``), and ``best.pth.tar`` when ``source`` is
    the best epoch itself and the file holds a lower mAP (a kill between the two writes of an
    older version, which wrote the epoch file first)."""
    epoch, step = source.progress
    if step or epoch == 0 or source.path.resolve().parent != folder.resolve():
        return
    epoch_file = folder / f"epoch_{epoch:03d}.pth.tar"
    if (epoch % ckpt_freq == 0 or epoch == max_epochs) and not epoch_file.exists():
        save_checkpoint(source.ckpt, epoch_file)
        log.info("wrote the missing %s from %s (the same state)", epoch_file.name, source.path.name)
    best_map, best_epoch = float(source.ckpt.get("best_map", -1.0)), source.ckpt.get("best_epoch", 0)
    if best_map < 0 or best_epoch != epoch:
        return
    best = folder / BEST_NAME
    try:
        have = float(load_checkpoint(best, mmap=True).get("best_map", -1.0)) if best.exists() else None
    except UserError:
        have = None
    if have is None or have < best_map:
        save_checkpoint(source.ckpt, best)
        log.warning("%s %s: rewritten from %s (epoch %d, average mAP %.2f%%, the best validated "
                    "epoch)", best, "was older" if have is not None else "was missing",
                    source.path.name, epoch, 100 * best_map)


def claim_for_run(exp: Path, resume: Optional[ResumeSource], unique: bool) -> RunFolder:
    """Check the run folder ``exp`` for a new run (no checkpoints) or a resume from ``resume``
    (no newer checkpoint replaced), create and lock it (``unique``: a fresh timestamp folder),
    check again under the lock, then remove the stale temp files of killed writes there."""
    def check(folder: Path) -> None:
        if resume is None:
            check_fresh_folder(folder)
        else:
            check_resume_target(folder, resume.path, resume.progress, resume.skipped)

    if exp.is_dir() and not unique:
        check(exp)                       # before creating or locking anything
    claimed = claim_run_dir(exp, unique)
    try:
        check(claimed.path)              # again: another run may have written meanwhile
    except BaseException:
        claimed.release()
        raise
    claimed.remove_stale_temps()
    return claimed
