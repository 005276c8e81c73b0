"""Score a challenge submission JSON against a Perception Test annotation file, as the challenge does
(docs/numerics.md s.8.6), or check a test-split submission before upload (``--check``).

    python tools/score_submission.py ANNOTATIONS SUBMISSION --task T --split S
        [--num-classes K] [--strict] [--json OUT] [--overwrite]
    python tools/score_submission.py ANNOTATIONS SUBMISSION --task T --split S --check
        [--num-classes K] [--max-seg-num N] [--strict]

Scoring follows the challenge's evaluators (libs/evaluation/challenge.py): the ground truth as
given (not clipped), every submitted video counted (predictions of videos outside the split are
false positives), tIoU thresholds ``np.linspace(0.1, 0.5, 5)``, predictions scored as they are
(also outside the video). Unusual inputs are warned about once per kind: predictions outside the
video, videos outside the split, classes without ground truth (counted against nothing),
split videos missing from the submission, video ids written twice; ``--strict`` makes each of
them the usual one-line error (exit 2). Labels outside ``--num-classes`` are always an error.
It prints the mAP table; ``--json`` also writes the metrics (fractions in [0, 1]) atomically.

``--check`` (also ``tools/check_submission.py``) validates without scoring (the test split has no
labels): every video of the split present and no other, the task key, label ids in
``[0, --num-classes)`` (default: the challenge's 12 sound / 63 action classes), finite scores,
at most ``--max-seg-num`` entries per video (default ``test_cfg.nms.max_seg_num``), no video
twice; predictions outside the video are a warning (an error with ``--strict``). A valid file
gives exit 0 and a one-line summary.
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

from libs.config.schema import TASKS, NmsConfig  # noqa: E402
from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.datasets.annotations import load_annotations  # noqa: E402
from libs.evaluation.challenge import (CHALLENGE_NUM_CLASSES, DUPLICATE_VIDEOS, LABEL_RANGE,  # noqa: E402
                                       MISSING_VIDEOS, NO_GROUND_TRUTH, OUTSIDE_SPLIT,
                                       OUTSIDE_VIDEO, TOO_MANY, report_findings,
                                       score_submission, split_videos, submission_findings)
from libs.evaluation.submission import check_output_path, read_submission, write_json  # noqa: E402

logger = logging.getLogger("score_submission")

# Label-id cap used when --num-classes is not given (the count is then inferred from the file).
_INFER_CAP = 1_000_000
WARN_KINDS = (OUTSIDE_VIDEO, OUTSIDE_SPLIT, NO_GROUND_TRUTH, MISSING_VIDEOS, DUPLICATE_VIDEOS)


def build_parser(prog: Optional[str] = None, check_only: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Score a submission JSON (ActivityNet mAP, "
                                                       "as the challenge) or check it before upload.")
    p.add_argument("annotations", help="Perception Test annotation JSON")
    p.add_argument("submission", help="submission JSON {video_id: {task: [entries]}}")
    p.add_argument("--task", required=True, choices=TASKS, help="which event list to score")
    p.add_argument("--split", required=True, help="split of the annotation file (e.g. valid, test)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes; submitted labels must be below it (default: largest "
                        "label id of the annotations + 1; --check: the challenge's count)")
    p.add_argument("--strict", action="store_true",
                   help="every warning (predictions outside the video, videos outside the split, "
                        "classes without ground truth, missing or repeated videos) is an error")
    if not check_only:
        p.add_argument("--check", action="store_true",
                       help="validate for upload instead of scoring (tools/check_submission.py)")
        p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--max-seg-num", type=int, default=None,
                   help="--check: entries allowed per video (default: test_cfg.nms.max_seg_num)")
    return p


def check(args: argparse.Namespace) -> int:
    """``--check``: validate the submission for upload; print one summary line."""
    num_classes = args.num_classes or CHALLENGE_NUM_CLASSES[args.task]
    max_seg_num = args.max_seg_num or NmsConfig().max_seg_num
    ann = load_annotations(args.annotations, args.task, num_classes, trim=False)
    sub = read_submission(args.submission, args.task)
    findings = submission_findings(sub, ann, args.split, num_classes=num_classes, gt_classes=None,
                                   max_seg_num=max_seg_num)
    errors = [LABEL_RANGE, TOO_MANY, MISSING_VIDEOS, OUTSIDE_SPLIT, DUPLICATE_VIDEOS]
    report_findings(findings, errors + ([OUTSIDE_VIDEO] if args.strict else []),
                    f"submission not ready for upload ({args.submission}, split '{args.split}')")
    n_videos = len(split_videos(ann, args.split))
    most = max(sub.entries.values(), default=0)
    print(f"submission OK ({args.submission}): all {n_videos} videos of split '{args.split}', "
          f"{len(sub.predictions)} entries of '{args.task}' (at most {most} per video, limit "
          f"{max_seg_num}), labels in [0, {num_classes}), finite scores"
          + (f"; {len(findings)} warning(s)" if findings else ""))
    return 0


def main(argv: Optional[List[str]] = None, check_only: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser(check_only=check_only).parse_args(argv)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"bad --num-classes ({args.num_classes}): expected an int >= 1")
    if args.max_seg_num is not None and args.max_seg_num < 1:
        raise UserError(f"bad --max-seg-num ({args.max_seg_num}): expected an int >= 1")
    if check_only or args.check:
        if not check_only and args.json:
            raise UserError("--json with --check (command line): the check writes no metrics")
        return check(args)
    if args.json:
        check_output_path(args.json, args.overwrite)
    num_classes = args.num_classes if args.num_classes is not None else _INFER_CAP
    ann = load_annotations(args.annotations, args.task, num_classes, trim=False)
    videos = split_videos(ann, args.split)
    if args.num_classes is None:
        ids = list(ann.label_names) + [int(v.labels.max()) for v in ann.videos if v.num_events]
        logger.info("num_classes inferred from %s: %d", args.annotations, max(ids, default=-1) + 1)
    sub = read_submission(args.submission, args.task)
    gt_classes = np.unique(np.concatenate([v.labels for v in videos]))
    findings = submission_findings(sub, ann, args.split, num_classes=args.num_classes,
                                   gt_classes=gt_classes, max_seg_num=None)
    report_findings(findings, [LABEL_RANGE] + (list(WARN_KINDS) if args.strict else []),
                    f"submission {'not accepted (--strict)' if args.strict else 'invalid'} "
                    f"({args.submission}, split '{args.split}')")
    result = score_submission(sub, ann, args.split)
    print(f"[RESULTS] {args.task} detection results of {os.path.basename(args.submission)} "
          f"on split '{args.split}'")
    print(result.format_table(recall=False))
    if args.json:
        report = result.to_dict(ann.label_names)
        report["warnings"] = [f.message for f in findings]
        write_json(report, args.json, overwrite=args.overwrite)
        logger.info("metrics written to %s", args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
