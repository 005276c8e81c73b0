#!/usr/bin/env python
"""Run a trained model on new videos: feature folders in, a challenge submission JSON out.

    python tools/predict.py CKPT --features NAME=DIR [--features NAME=DIR ...] [--out SUB.json]
        [--durations CSV | --rows-per-second R | --feature-kind beats|umt|videomae]
        [--videos ID ...] [-epoch N] [--no-ema] [--device cpu|cuda] [--amp none|bf16|fp16]
        [--threads N]
        [--overwrite] [--opt KEY=VALUE ...]

CKPT is a checkpoint of train.py (or a run folder: ``-epoch N``, else the latest). No annotation
file is needed: every ``<video_id>.npy|.pt`` of the primary modality's folder (or dataset of its
``.h5`` file) is one video (``--videos`` picks some); NAME is each modality name of the
checkpoint's ``dataset.modalities`` (all of them, once). The features are assembled and the
detections post-processed exactly as ``eval.py`` does with the checkpoint's config (``--opt``
overrides data/post-processing keys, e.g. ``test_cfg.nms.max_seg_num=100``).

Durations (seconds; they set the time grid and the clipping):
* ``--durations CSV``: header ``video_id,duration`` (exact; every video must be listed);
* else estimated from the primary modality's rows (libs/datasets/newvideos.py):
  ``--rows-per-second R`` (D = T / R), ``--feature-kind`` (beats: D = (T/8*16 + 2)/100, up to
  0.16 s short; umt/videomae: D = T/7.5); without either, the checkpoint's own clock for
  ``time_grid: stride`` (R = fps / feat_stride), or the preset of the primary modality's name
  when it is a known kind (beats, umt, videomae); otherwise an error.

Output: ``--out`` (default ``<checkpoint folder>/predict_epoch_NNN_results.json``), the challenge
format of eval.py (every video, descending score, at most ``test_cfg.nms.max_seg_num``); an
existing file is kept unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from libs.common.checkpoints import find_checkpoint  # noqa: E402
from libs.common.distributed import add_device_arg  # noqa: E402
from libs.common.errors import UserError, format_problems, run_cli  # noqa: E402
from libs.common.logs import setup_logging  # noqa: E402
from libs.common.threads import add_threads_arg, apply_threads  # noqa: E402
from libs.config import add_config_args  # noqa: E402
from libs.config.tasks import TaskLayout, task_test_cfg  # noqa: E402
from libs.datasets.newvideos import (FEATURE_KINDS, durations_from_rows, feature_rows,  # noqa: E402
                                     list_feature_videos, new_video_set, read_durations_csv)
from libs.datasets.perception import PerceptionDataset  # noqa: E402
from libs.evaluation.localiser import Localiser  # noqa: E402
from libs.evaluation.predict import nms_settings_summary, predict_dataset  # noqa: E402
from libs.evaluation.submission import (check_output_path, detections_to_task_submission,  # noqa: E402
                                        write_json)

log = logging.getLogger("predict")


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", help="checkpoint file or run folder")
    p.add_argument("--features", action="append", required=True, metavar="NAME=DIR",
                   help="feature folder (or .h5 file) of modality NAME; repeat for every modality")
    p.add_argument("--out", default=None, help="submission JSON to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--durations", default=None, metavar="CSV",
                   help="CSV video_id,duration (seconds): exact durations")
    g.add_argument("--rows-per-second", type=float, default=None, metavar="R",
                   help="duration = primary rows / R")
    g.add_argument("--feature-kind", choices=sorted(FEATURE_KINDS), default=None,
                   help="duration from the primary rows with this extractor's rate")
    p.add_argument("--videos", nargs="+", default=None, metavar="ID", help="only these videos")
    p.add_argument("-epoch", "--epoch", type=int, default=None, help="epoch to load from a folder")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    add_device_arg(p)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="mixed precision of the forward pass (as eval.py --amp)")
    add_threads_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    add_config_args(p)
    return p.parse_args(argv)


def parse_features(items: List[str], names: List[str], source: str
                   ) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, List[str]]]:
    """``NAME=DIR`` items -> folders, extensions and video ids per modality; every modality of
    the checkpoint exactly once."""
    folders: Dict[str, str] = {}
    problems: List[str] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            problems.append(f"--features {item!r}: expected NAME=DIR")
        elif name not in names:
            problems.append(f"--features {item!r}: unknown modality '{name}'")
        elif name in folders:
            problems.append(f"--features {item!r}: modality '{name}' given twice")
        else:
            folders[name] = path
    problems += [f"no --features {n}=DIR" for n in names if n not in folders and
                 not any(p.endswith(f"modality '{n}' given twice") for p in problems)]
    if problems:
        raise UserError(format_problems(problems, f"bad --features (command line; the modalities of "
                                                  f"{source} are {', '.join(names)})"))
    exts, ids = {}, {}
    for name in names:
        ids[name], exts[name] = list_feature_videos(folders[name])
    return folders, exts, ids


def pick_videos(available: List[str], wanted: Optional[List[str]], folder: str) -> List[str]:
    if wanted is None:
        return available
    have = set(available)
    unknown = [v for v in wanted if v not in have]
    if unknown:
        raise UserError(format_problems([f"video '{v}'" for v in unknown],
                                        f"--videos not in the primary feature folder ({folder})"))
    return list(dict.fromkeys(wanted))


def video_durations(args: argparse.Namespace, loc: Localiser, videos: List[str], folder: str,
                    ext: str) -> np.ndarray:
    """Seconds per video (V,) from --durations, or estimated from the primary rows."""
    if args.durations:
        table = read_durations_csv(args.durations)
        missing = [v for v in videos if v not in table]
        if missing:
            raise UserError(format_problems([f"video '{v}'" for v in missing],
                                            f"videos without a duration ({args.durations})"))
        return np.array([table[v] for v in videos], dtype=np.float64)
    ds = loc.cfg.dataset
    primary = next(m for m in ds.modalities if m.primary)
    kind, rate = args.feature_kind, args.rows_per_second
    if rate is not None and not (np.isfinite(rate) and rate > 0):
        raise UserError(f"bad --rows-per-second ({rate}): expected a positive number")
    if kind is None and rate is None:
        if ds.time_grid == "stride":
            rate = ds.fps / ds.feat_stride
        elif primary.name.lower() in FEATURE_KINDS:
            kind = primary.name.lower()
        else:
            raise UserError(f"no durations for the new videos (primary modality '{primary.name}' of "
                            f"{loc.source}): pass --durations CSV, --rows-per-second R or "
                            f"--feature-kind {'|'.join(sorted(FEATURE_KINDS))}")
    how = f"feature kind '{kind}'" if kind else f"{rate:g} rows/s"
    log.warning("durations estimated from the '%s' rows (%s): pass --durations CSV for exact "
                "times", primary.name, how)
    return durations_from_rows(feature_rows(folder, ext, videos), kind, rate)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    setup_logging(None)
    ckpt_path = find_checkpoint(args.ckpt, args.epoch)
    loc = Localiser.from_checkpoint(ckpt_path, weights="raw" if args.no_ema else "ema",
                                    device=args.device, amp=args.amp)
    loc.with_options(list(args.opt or []), "--opt")
    apply_threads(args.threads, loc.cfg.loader.num_workers)
    out = args.out or str(Path(ckpt_path).parent / f"predict_epoch_{loc.epoch:03d}_results.json")
    check_output_path(out, args.overwrite)                 # before any work: fail fast

    folders, exts, ids = parse_features(args.features, loc.modalities, str(ckpt_path))
    primary = next(m.name for m in loc.cfg.dataset.modalities if m.primary)
    videos = pick_videos(ids[primary], args.videos, folders[primary])
    durations = video_durations(args, loc, videos, folders[primary], exts[primary])
    cfg = loc.config_for_folders(folders, exts)
    if cfg.test_cfg.ext_score_file:
        log.warning("test_cfg.ext_score_file (%s) is not applied to new videos",
                    cfg.test_cfg.ext_score_file)
    videos_set = new_video_set(videos, durations, cfg.task, loc.label_names,
                               f"--features {folders[primary]}")
    dataset = PerceptionDataset(cfg.dataset, task=cfg.task, seed=cfg.seed, splits=[],
                                is_training=False, annotations=videos_set,
                                show_progress=not args.no_progress)
    log.info("%d new videos (%.1f-%.1f s); %s", len(dataset), float(durations.min()),
             float(durations.max()), nms_settings_summary(cfg.test_cfg.nms))
    detections = predict_dataset(loc.model, dataset, cfg, loc.device, amp=loc.amp,
                                 show_progress=not args.no_progress)
    layout = TaskLayout.from_config(cfg)
    submission = detections_to_task_submission(
        detections, layout, videos, [task_test_cfg(cfg, t).nms.max_seg_num for t in layout.tasks])
    write_json(submission, out, overwrite=args.overwrite)
    counts = ", ".join(f"{sum(len(v[t]) for v in submission.values())} detections ({t})"
                       for t in layout.tasks)
    print(f"wrote {out}: {len(submission)} videos, {counts}, "
          f"{os.path.basename(str(ckpt_path))} epoch {loc.epoch}")
    return 0


if __name__ == "__main__":
    run_cli(main)
