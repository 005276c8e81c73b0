"""Score a challenge submission JSON against a Perception Test annotation file, as the challenge does
(docs/numerics.md s.8.6), or check a test-split submission before upload (``--check``).

    python tools/score_submission.py ANNOTATIONS [ANNOTATIONS ...] SUBMISSION --task T [T ...]
        --split S [--num-classes K | TASK=K[,TASK=K]] [--strict] [--json OUT] [--overwrite]
    python tools/score_submission.py ANNOTATIONS [ANNOTATIONS ...] SUBMISSION --task T [T ...]
        --split S --check [--num-classes ...] [--max-seg-num N | TASK=N[,TASK=N]] [--strict]

Scoring follows the challenge's evaluators (libs/evaluation/challenge.py): the ground truth as
given (not clipped), every submitted video counted (predictions of videos outside the split are
false positives), tIoU thresholds ``np.linspace(0.1, 0.5, 5)``, predictions scored as they are
(also outside the video). Unusual inputs are warned about once per kind: predictions outside the
video, videos outside the split, classes without ground truth (counted against nothing),
split videos missing from the submission, video ids written twice; ``--strict`` makes each of
them the usual one-line error (exit 2). Labels outside ``--num-classes`` are always an error.
It prints the mAP table; ``--json`` also writes the metrics (fractions in [0, 1]) atomically.

Several tasks (a unified model's submission, every video holding every task's list): ``--task
action_localisation sound_localisation`` (or comma-separated, or ``--task`` repeated) scores each
task on its own, exactly as a one-task call would, prints each task's table, then the headline
(the mean of the tasks' average mAPs). ``--num-classes`` / ``--max-seg-num`` then take
``TASK=K`` per task (comma-separated or repeated; a task not named gets the default). The
annotations may be one file holding both lists per video, or one file per task (the challenge's
``challenge_action_localisation_<split>.json challenge_sound_localisation_<split>.json``),
merged by video id (libs/datasets/task_annotations.py). ``--json`` then holds ``tasks``,
``average_map`` (the headline), ``per_task`` (each task's metrics) and ``warnings``.

``--check`` (also ``tools/check_submission.py``) validates without scoring (the test split has no
labels): every video of the split present and no other, the task key(s), label ids in
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
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.config.schema import TASKS, NmsConfig  # noqa: E402
from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.evaluation.challenge import (CHALLENGE_NUM_CLASSES, DUPLICATE_VIDEOS, LABEL_RANGE,  # noqa: E402
                                       MISSING_VIDEOS, NO_GROUND_TRUTH, OUTSIDE_SPLIT,
                                       OUTSIDE_VIDEO, TOO_MANY, headline_line, mean_average_map,
                                       report_findings, score_submission, split_videos,
                                       submission_findings, task_annotation_sets, task_findings)
from libs.evaluation.submission import check_output_path, read_task_submission, write_json  # noqa: E402

logger = logging.getLogger("score_submission")

# Label-id cap used when --num-classes is not given (the count is then inferred from the file).
_INFER_CAP = 1_000_000
WARN_KINDS = (OUTSIDE_VIDEO, OUTSIDE_SPLIT, NO_GROUND_TRUTH, MISSING_VIDEOS, DUPLICATE_VIDEOS)


def _is_task_list(token: str) -> bool:
    return all(t in TASKS for t in token.split(",") if t) and any(token.split(","))


def join_task_values(argv: Sequence[str]) -> List[str]:
    """``--task a b`` (the task names after ``--task``) -> ``--task a,b``, so that the positional
    arguments may follow ``--task`` as before."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--task":
            j = i + 1
            while j < len(argv) and _is_task_list(argv[j]):
                j += 1
            if j > i + 1:
                out.append(",".join(argv[i + 1:j]))
                i = j
                continue
        i += 1
    return out


def parse_tasks(values: Sequence[str]) -> List[str]:
    """``--task`` values (each one task or comma-separated tasks) -> the task list."""
    tasks = [t.strip() for v in values for t in v.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise UserError(f"bad --task ({', '.join(values)}): expected one or more of "
                        f"{', '.join(TASKS)}")
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise UserError(f"bad --task ({', '.join(values)}): {', '.join(twice)} given twice, "
                        "expected each task once")
    return tasks


def per_task_ints(values: Optional[Sequence[str]], tasks: Sequence[str], flag: str
                  ) -> Dict[str, Optional[int]]:
    """``--num-classes`` / ``--max-seg-num`` values -> ``{task: int or None (not given)}``: one int
    (one task only), or ``TASK=N`` items (comma-separated or repeated), each an int >= 1."""
    out: Dict[str, Optional[int]] = {t: None for t in tasks}
    items = [x.strip() for v in (values or []) for x in v.split(",") if x.strip()]
    for item in items:
        task, sep, num = item.rpartition("=")
        try:
            n = int(num)
        except ValueError:
            n = None
        if sep and task not in tasks:
            raise UserError(f"bad {flag} ({item}): {task!r} is not a task of --task "
                            f"({', '.join(tasks)})")
        if not sep and len(tasks) > 1:
            raise UserError(f"bad {flag} ({item}): expected TASK=N for each of the tasks "
                            f"{', '.join(tasks)}")
        if n is None or n < 1:
            raise UserError(f"bad {flag} ({num}): expected an int >= 1")
        key = task if sep else tasks[0]
        if out[key] is not None:
            raise UserError(f"bad {flag} ({item}): a second value for {key}, expected one")
        out[key] = n
    return out


def build_parser(prog: Optional[str] = None, check_only: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Score a submission JSON (ActivityNet mAP, "
                                                       "as the challenge) or check it before upload.")
    p.add_argument("annotations", nargs="+",
                   help="Perception Test annotation JSON: one file holding every task's lists, or "
                        "one file per task (merged by video id)")
    p.add_argument("submission", help="submission JSON {video_id: {task: [entries]}}")
    p.add_argument("--task", required=True, action="append",
                   help="which event list(s) to score: one of " + ", ".join(TASKS) + "; several "
                        "as 'T1 T2', 'T1,T2' or --task repeated")
    p.add_argument("--split", required=True, help="split of the annotation file (e.g. valid, test)")
    p.add_argument("--num-classes", action="append", default=None, metavar="K|TASK=K",
                   help="number of classes; submitted labels must be below it (default: largest "
                        "label id of the annotations + 1; --check: the challenge's count); "
                        "several tasks: TASK=K per task")
    p.add_argument("--strict", action="store_true",
                   help="every warning (predictions outside the video, videos outside the split, "
                        "classes without ground truth, missing or repeated videos) is an error")
    if not check_only:
        p.add_argument("--check", action="store_true",
                       help="validate for upload instead of scoring (tools/check_submission.py)")
        p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--max-seg-num", action="append", default=None, metavar="N|TASK=N",
                   help="--check: entries allowed per video (default: test_cfg.nms.max_seg_num); "
                        "several tasks: TASK=N per task")
    return p


def check(args: argparse.Namespace, tasks: List[str], num_classes: Dict[str, Optional[int]],
          max_seg: Dict[str, Optional[int]]) -> int:
    """``--check``: validate the submission for upload; print one summary line."""
    counts = {t: num_classes[t] or CHALLENGE_NUM_CLASSES[t] for t in tasks}
    limits = {t: max_seg[t] or NmsConfig().max_seg_num for t in tasks}
    anns = task_annotation_sets(args.annotations, tasks, [counts[t] for t in tasks], trim=False)
    subs = read_task_submission(args.submission, tasks)
    findings = task_findings({t: submission_findings(subs[t], anns[t], args.split,
                                                     num_classes=counts[t], gt_classes=None,
                                                     max_seg_num=limits[t]) for t in tasks})
    errors = [LABEL_RANGE, TOO_MANY, MISSING_VIDEOS, OUTSIDE_SPLIT, DUPLICATE_VIDEOS]
    report_findings(findings, errors + ([OUTSIDE_VIDEO] if args.strict else []),
                    f"submission not ready for upload ({args.submission}, split '{args.split}')")
    n_videos = len(split_videos(anns[tasks[0]], args.split))
    lists = [f"{len(subs[t].predictions)} entries of '{t}' (at most "
             f"{max(subs[t].entries.values(), default=0)} per video, limit {limits[t]}), labels in "
             f"[0, {counts[t]})" for t in tasks]
    print(f"submission OK ({args.submission}): all {n_videos} videos of split '{args.split}', "
          + "; ".join(lists) + ", finite scores"
          + (f"; {len(findings)} warning(s)" if findings else ""))
    return 0


def main(argv: Optional[List[str]] = None, check_only: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = join_task_values(sys.argv[1:] if argv is None else list(argv))
    args = build_parser(check_only=check_only).parse_args(argv)
    tasks = parse_tasks(args.task)
    num_classes = per_task_ints(args.num_classes, tasks, "--num-classes")
    max_seg = per_task_ints(args.max_seg_num, tasks, "--max-seg-num")
    if check_only or args.check:
        if not check_only and args.json:
            raise UserError("--json with --check (command line): the check writes no metrics")
        return check(args, tasks, num_classes, max_seg)
    if args.json:
        check_output_path(args.json, args.overwrite)
    counts = [num_classes[t] if num_classes[t] is not None else _INFER_CAP for t in tasks]
    anns = task_annotation_sets(args.annotations, tasks, counts, trim=False)
    subs = read_task_submission(args.submission, tasks)
    per_task_findings, gt_classes = {}, {}
    for task in tasks:
        ann = anns[task]
        videos = split_videos(ann, args.split)
        if num_classes[task] is None:
            ids = list(ann.label_names) + [int(v.labels.max()) for v in ann.videos if v.num_events]
            logger.info("num_classes%s inferred from %s: %d", f" of {task}" if len(tasks) > 1
                        else "", ann.path, max(ids, default=-1) + 1)
        gt_classes[task] = np.unique(np.concatenate([v.labels for v in videos]))
        per_task_findings[task] = submission_findings(
            subs[task], ann, args.split, num_classes=num_classes[task],
            gt_classes=gt_classes[task], max_seg_num=None)
    findings = task_findings(per_task_findings)
    report_findings(findings, [LABEL_RANGE] + (list(WARN_KINDS) if args.strict else []),
                    f"submission {'not accepted (--strict)' if args.strict else 'invalid'} "
                    f"({args.submission}, split '{args.split}')")
    results = {task: score_submission(subs[task], anns[task], args.split) for task in tasks}
    for task in tasks:
        print(f"[RESULTS] {task} detection results of {os.path.basename(args.submission)} "
              f"on split '{args.split}'")
        print(results[task].format_table(recall=False))
    if len(tasks) > 1:
        print(f"[RESULTS] {headline_line(results)}")
    if args.json:
        if len(tasks) == 1:
            report = results[tasks[0]].to_dict(anns[tasks[0]].label_names)
        else:
            report = {"tasks": tasks, "average_map": mean_average_map(results),
                      "per_task": {t: results[t].to_dict(anns[t].label_names) for t in tasks}}
        report["warnings"] = [f.message for f in findings]
        write_json(report, args.json, overwrite=args.overwrite)
        logger.info("metrics written to %s", args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
