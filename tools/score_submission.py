"""Score a challenge submission JSON against a Perception Test annotation file (docs/numerics.md s.8).

    python tools/score_submission.py ANNOTATIONS SUBMISSION --task T --split S
        [--num-classes K] [--json OUT] [--overwrite]

Prints the mAP table (one line per tIoU, then the average). Videos of the submission that are not
in the split are ignored, and split videos missing from the submission score as "no detections";
both are counted in a warning. ``--json`` writes the metrics (fractions in [0, 1]) atomically.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.config.schema import TASKS  # noqa: E402
from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.datasets.annotations import load_annotations  # noqa: E402
from libs.evaluation.metrics import DEFAULT_TIOU_THRESHOLDS, evaluate_map  # noqa: E402
from libs.evaluation.events import Predictions, ground_truth_from_records  # noqa: E402
from libs.evaluation.submission import load_submission_with_ids, write_json  # noqa: E402

logger = logging.getLogger("score_submission")

# Label-id cap used when --num-classes is not given (the count is then inferred from the file).
_INFER_CAP = 1_000_000


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Score a submission JSON (ActivityNet mAP).")
    p.add_argument("annotations", help="Perception Test annotation JSON")
    p.add_argument("submission", help="submission JSON {video_id: {task: [entries]}}")
    p.add_argument("--task", required=True, choices=TASKS, help="which event list to score")
    p.add_argument("--split", required=True, help="split of the annotation file to score (e.g. valid)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes (default: largest label id in the file + 1)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p.parse_args(argv)


def _examples(ids: List[str], n: int = 5) -> str:
    shown = ", ".join(ids[:n])
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = _parse(argv)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"bad --num-classes ({args.num_classes}): expected an int >= 1")
    if args.json and os.path.exists(args.json) and not args.overwrite:
        raise UserError(f"output file already exists ({args.json}): pass --overwrite to replace it")
    num_classes = args.num_classes if args.num_classes is not None else _INFER_CAP
    ann = load_annotations(args.annotations, args.task, num_classes, splits=[args.split])
    if args.num_classes is None:
        ids = list(ann.label_names) + [int(v.labels.max()) for v in ann.videos if v.num_events]
        logger.info("num_classes inferred from %s: %d", args.annotations, max(ids, default=-1) + 1)
    gt = ground_truth_from_records(ann.videos)
    if len(gt) == 0:
        raise UserError(f"no ground-truth events of '{args.task}' in split '{args.split}' "
                        f"({args.annotations}): this split cannot be scored")
    preds, sub_ids = load_submission_with_ids(args.submission, args.task)

    split_ids = {v.video_id for v in ann.videos}
    extra = [v for v in sub_ids if v not in split_ids]
    if extra:
        logger.warning("%d video(s) of the submission are not in split '%s' and are ignored: %s",
                       len(extra), args.split, _examples(extra))
        keep = np.isin(preds.video_ids, np.asarray(extra, dtype=str), invert=True)
        preds = Predictions(preds.video_ids[keep], preds.t_start[keep], preds.t_end[keep],
                            preds.labels[keep], preds.scores[keep])
    present = set(sub_ids)
    missing = [v.video_id for v in ann.videos if v.video_id not in present]
    if missing:
        logger.warning("%d of %d video(s) of split '%s' are missing from the submission "
                       "(no detections): %s",
                       len(missing), len(ann.videos), args.split, _examples(missing))

    result = evaluate_map(gt, preds, DEFAULT_TIOU_THRESHOLDS, where=f"split '{args.split}'")
    if result.ignored_predictions:
        logger.warning("%d prediction(s) of classes without ground truth in split '%s' ignored",
                       result.ignored_predictions, args.split)
    print(f"[RESULTS] {args.task} detection results of {os.path.basename(args.submission)} "
          f"on split '{args.split}'")
    print(result.format_table(recall=False))
    if args.json:
        write_json(result.to_dict(ann.label_names), args.json, overwrite=args.overwrite)
        logger.info("metrics written to %s", args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
