#!/usr/bin/env python
"""Write a Perception Test annotation file (docs/numerics.md s.1.1) for new, unlabelled videos.

    python tools/make_annotations.py --features DIR [--features DIR2 ...] --out ANN.json \\
        [--fps 30] --num-frames-from {csv,features} [--csv FILE] \\
        [--feature-kind beats|umt|videomae | --rows-per-second R] [--split test] \\
        [--allow-missing] [--overwrite]

Every ``<video_id>.npy|.pt`` of the first ``--features`` folder (or every dataset of an ``.h5``
file) becomes one video with metadata only (``video_id``, ``split``, ``num_frames``,
``frame_rate`` = ``--fps``) and empty ``sound_localisation`` / ``action_localisation`` lists, so that
``eval.py CONFIG CKPT --saveonly`` predicts on it. Further ``--features`` folders (the other
modalities) must hold the same videos.

``num_frames`` comes from:
* ``--num-frames-from csv``: a CSV with header ``video_id,num_frames`` or ``video_id,duration_s``
  (then ``num_frames = round(duration_s * fps)``);
* ``--num-frames-from features``: the row count T of the first folder's files, as a duration D in
  seconds, ``num_frames = round(D * fps)``:
  - ``--rows-per-second R``: D = T / R;
  - ``--feature-kind beats``: BEATs gives N_a = 8*floor((100*D - 2)/16) rows (8 frequency tokens per
    160 ms patch, ~50 rows/s), inverted as D = (N_a/8*16 + 2)/100 (the shortest video giving N_a
    rows; the true video may be up to 0.16 s longer);
  - ``--feature-kind umt`` / ``videomae``: one row per 4 frames at 30 fps, D = T / 7.5.
  The CSV is exact; durations from features are estimates (use a CSV where you can).

Videos in the CSV without features, with features but not in the CSV, or missing from another
``--features`` folder are an error (listed at once); ``--allow-missing`` turns them into a warning
and leaves those videos out. An existing ``--out`` is kept unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from libs.common.errors import UserError, format_problems, run_cli  # noqa: E402
from libs.datasets.newvideos import (FEATURE_KINDS, durations_from_rows,  # noqa: E402,F401
                                     feature_rows, list_feature_videos, read_video_csv)
from libs.evaluation.submission import write_json  # noqa: E402

logger = logging.getLogger("make_annotations")

TASKS = ("sound_localisation", "action_localisation")
SPLITS = ("train", "valid", "test")
list_videos = list_feature_videos
_feature_rows = feature_rows


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit 2 through run_cli)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"bad arguments ({self.prog}): {message}; see --help")


def read_num_frames_csv(path: str, fps: float) -> Dict[str, int]:
    """``{video_id: num_frames}`` from a CSV with ``video_id`` and ``num_frames`` or ``duration_s``."""
    def check(col: str, value: float) -> Optional[str]:
        if col == "num_frames" and not value.is_integer():
            return f"num_frames is {value:g}, expected an int"
        if col == "duration_s" and round(value * fps) < 1:
            return f"duration_s {value:g} is under one frame at {fps:g} fps"
        return None

    col, values = read_video_csv(path, ("num_frames", "duration_s"),
                                 "video_id,num_frames or video_id,duration_s", check)
    return {vid: int(v) if col == "num_frames" else int(round(v * fps)) for vid, v in values.items()}


def _check_missing(problems: List[str], allow_missing: bool) -> None:
    if not problems:
        return
    if not allow_missing:
        raise UserError(format_problems(problems, f"videos do not match ({len(problems)} problem(s), "
                                                  "--allow-missing leaves them out)"))
    for p in problems:
        logger.warning("left out: %s", p)


def make_annotations(features: Sequence[str], fps: float, num_frames_from: str,
                     csv_path: Optional[str] = None, feature_kind: Optional[str] = None,
                     rows_per_second: Optional[float] = None, split: str = "test",
                     allow_missing: bool = False) -> dict:
    """The annotation dict ``{video_id: {metadata, sound_localisation: [], action_localisation: []}}``."""
    assert features and split in SPLITS and num_frames_from in ("csv", "features")
    ids, ext = list_videos(features[0])
    keep = set(ids)
    problems: List[str] = []
    for other in features[1:]:
        other_ids = set(list_videos(other)[0])
        missing = [v for v in ids if v not in other_ids]
        problems += [f"video '{v}' has no features in {other}" for v in missing]
        keep -= set(missing)
        if other_ids - set(ids):
            logger.info("%d videos of %s are not in %s and are ignored", len(other_ids - set(ids)),
                        other, features[0])
    if num_frames_from == "csv":
        assert csv_path is not None
        table = read_num_frames_csv(csv_path, fps)
        problems += [f"video '{v}' of {csv_path} has no features in {features[0]}"
                     for v in table if v not in set(ids)]
        problems += [f"video '{v}' has features in {features[0]} but is not in {csv_path}"
                     for v in ids if v not in table]
        keep &= set(table)
    _check_missing(problems, allow_missing)
    videos = [v for v in ids if v in keep]
    if not videos:
        raise UserError(f"no video left ({features[0]}): expected videos with features in every "
                        "--features folder" + (" and a row in --csv" if csv_path else ""))
    if num_frames_from == "csv":
        num_frames = np.array([table[v] for v in videos], dtype=np.int64)
    else:
        durations = durations_from_rows(_feature_rows(features[0], ext, videos), feature_kind,
                                        rows_per_second)
        num_frames = np.rint(durations * fps).astype(np.int64)
        short = [v for v, n in zip(videos, num_frames) if n < 1]
        if short:
            raise UserError(format_problems(short, f"videos shorter than one frame at {fps:g} fps "
                                                   f"({features[0]})"))
    return {vid: {"metadata": {"video_id": vid, "split": split, "num_frames": int(n),
                               "frame_rate": float(fps)},
                  **{task: [] for task in TASKS}}
            for vid, n in zip(videos, num_frames)}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="make_annotations.py",
                description="Write a metadata-only Perception Test annotation file for new videos.")
    p.add_argument("--features", action="append", required=True, metavar="DIR",
                   help="feature folder (<video_id>.npy|.pt) or .h5 file; repeat per modality, the "
                        "first one lists the videos")
    p.add_argument("--out", required=True, help="annotation JSON to write")
    p.add_argument("--fps", type=float, default=30.0, help="frame_rate written per video (default 30)")
    p.add_argument("--num-frames-from", required=True, choices=("csv", "features"))
    p.add_argument("--csv", help="CSV video_id,num_frames or video_id,duration_s (--num-frames-from csv)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--feature-kind", choices=sorted(FEATURE_KINDS),
                   help="duration from the first folder's rows: beats D=(N_a/8*16+2)/100, umt/videomae "
                        "D=T/7.5")
    g.add_argument("--rows-per-second", type=float, help="duration D = T / R from the first folder's rows")
    p.add_argument("--split", default="test", choices=SPLITS, help="metadata.split (default test)")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out (with a warning) videos missing from the CSV or a feature folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"bad --fps ({args.fps}): expected a positive frame rate")
    if args.num_frames_from == "csv":
        if not args.csv:
            raise UserError("missing --csv (--num-frames-from csv): expected a CSV video_id,num_frames "
                            "or video_id,duration_s")
        if args.feature_kind or args.rows_per_second is not None:
            raise UserError("--feature-kind/--rows-per-second given (--num-frames-from csv): expected "
                            "them only with --num-frames-from features")
    else:
        if args.csv:
            raise UserError("--csv given (--num-frames-from features): expected it only with "
                            "--num-frames-from csv")
        if args.feature_kind is None and args.rows_per_second is None:
            raise UserError("missing --feature-kind or --rows-per-second (--num-frames-from features): "
                            "expected one to turn feature rows into seconds")
        if args.rows_per_second is not None and not (math.isfinite(args.rows_per_second)
                                                     and args.rows_per_second > 0):
            raise UserError(f"bad --rows-per-second ({args.rows_per_second}): expected a positive number")
    if os.path.exists(args.out) and not args.overwrite:
        raise UserError(f"output file already exists ({args.out}): pass --overwrite to replace it")
    ann = make_annotations(args.features, args.fps, args.num_frames_from, args.csv, args.feature_kind,
                           args.rows_per_second, args.split, args.allow_missing)
    write_json(ann, args.out, overwrite=args.overwrite)
    frames = np.array([v["metadata"]["num_frames"] for v in ann.values()], dtype=np.float64)
    print(f"wrote {args.out}: {len(ann)} videos, split {args.split}, frame_rate {args.fps:g}, "
          f"num_frames from {args.num_frames_from}, durations {frames.min() / args.fps:.2f}-"
          f"{frames.max() / args.fps:.2f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
