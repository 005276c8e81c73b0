"""Scoring a submission file the way the challenge does, and checking one before upload
(docs/numerics.md s.8.6; ``tools/score_submission.py``, ``tools/check_submission.py``).

The references are the official ActivityNet ``ANETdetection`` and the Perception Test baseline's
ActionFormer fork. Where they agree, :func:`score_submission` reproduces them:

- the ground truth is the split's events **as given** (not clipped to the video);
- **every submitted video counts**: predictions of a video outside the split (or without events
  of that class) are false positives of their class;
- the tIoU thresholds are ``np.linspace(0.1, 0.5, 5)`` exactly (``0.30000000000000004``);
- predictions are scored **as they are**, also when they start before 0 s or end after the video.

Where a reference is wrong, ours differs (docs/differences.md s.4): a prediction of a class
without ground truth in the split counts against nothing (the fork scores it as another class).

Every unusual input is a :class:`Finding` of one ``kind``; the tools log one warning per kind,
or, with ``--strict``, turn them into the usual one-line error.

Several tasks (a unified model's submission): each task is scored on its own, exactly as a
one-task file would be (:func:`task_annotation_sets` gives each task's ground truth, task-local
labels, from one both-lists file or per-task files); the headline is the mean of the tasks'
average mAPs (:func:`mean_average_map`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from libs.common.errors import UserError
from libs.config.tasks import TaskLayout
from libs.datasets.annotations import AnnotationSet, VideoRecord
from libs.datasets.task_annotations import load_task_annotations, task_records
from libs.evaluation.events import Predictions, ground_truth_from_records
from libs.evaluation.metrics import MetricResult, evaluate_map
from libs.evaluation.submission import SubmissionFile

logger = logging.getLogger(__name__)

CHALLENGE_TIOU_THRESHOLDS: Tuple[float, ...] = tuple(float(t) for t in np.linspace(0.1, 0.5, 5))
# The challenge's class counts (label ids 0..K-1), used by the upload check without --num-classes.
CHALLENGE_NUM_CLASSES: Dict[str, int] = {"sound_localisation": 12, "action_localisation": 63}
FLOAT32_SLACK = 2.0 ** -23     # relative: an end within float32 rounding of the duration is inside

# Kinds of findings. Scoring warns on these (errors with --strict):
OUTSIDE_VIDEO = "predictions outside the video"
OUTSIDE_SPLIT = "videos outside the split"
NO_GROUND_TRUTH = "classes without ground truth"
MISSING_VIDEOS = "videos missing from the submission"
DUPLICATE_VIDEOS = "videos written twice"
# ... and these are errors whenever they are checked:
LABEL_RANGE = "labels out of range"
TOO_MANY = "too many entries"


@dataclass(frozen=True)
class Finding:
    """One kind of unusual input, described in one line (with counts and examples)."""
    kind: str
    message: str


def examples(ids: Sequence[str], n: int = 5) -> str:
    """``a, b, c, ... (N more)``."""
    shown = ", ".join(str(v) for v in ids[:n])
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


def split_videos(ann: AnnotationSet, split: str) -> List[VideoRecord]:
    """The videos of ``split`` (lower-case compare); none is a UserError listing the splits."""
    videos = [v for v in ann.videos if v.split == split.lower()]
    if not videos:
        raise UserError(f"no video of split {split} in the annotation file ({ann.path}): splits "
                        f"found are {', '.join(ann.splits_found) or 'none'}")
    return videos


def submission_findings(sub: SubmissionFile, ann: AnnotationSet, split: str, *,
                        num_classes: Optional[int], gt_classes: Optional[np.ndarray],
                        max_seg_num: Optional[int]) -> List[Finding]:
    """Every kind of unusual input of ``sub`` against the videos of ``split`` in ``ann``.

    ``num_classes``: labels must lie in ``[0, num_classes)`` (None: not checked);
    ``gt_classes``: the split's ground-truth classes (None: not checked); ``max_seg_num``: entries
    per video (None: not checked). Durations come from every video of ``ann``.
    """
    p = sub.predictions
    in_split = {v.video_id for v in split_videos(ann, split)}
    duration = {v.video_id: v.duration for v in ann.videos}
    out: List[Finding] = []
    if sub.duplicate_ids:
        out.append(Finding(DUPLICATE_VIDEOS, f"{len(sub.duplicate_ids)} video id(s) written more than "
                           f"once (the last copy is scored, as json keeps it): "
                           f"{examples(sub.duplicate_ids)}"))
    extra = [v for v in sub.video_ids if v not in in_split]
    if extra:
        n_pred = int(np.isin(p.video_ids, np.asarray(extra, dtype=str)).sum())
        out.append(Finding(OUTSIDE_SPLIT, f"{len(extra)} video(s) of the submission are not in split "
                           f"'{split}'; their {n_pred} prediction(s) count as false positives (as "
                           f"the challenge's evaluators count them): {examples(extra)}"))
    present = set(sub.video_ids)
    missing = [v for v in sorted(in_split) if v not in present]
    if missing:
        out.append(Finding(MISSING_VIDEOS, f"{len(missing)} of {len(in_split)} video(s) of split "
                           f"'{split}' are missing from the submission (no detections): "
                           f"{examples(missing)}"))
    ends = np.array([duration.get(v, np.inf) for v in p.video_ids], dtype=np.float64)  # (N,)
    # Clipped float32 seconds may round past a float64 duration by half a float32 ulp.
    outside = (p.t_start < 0) | (p.t_end > ends * (1.0 + FLOAT32_SLACK))
    if outside.any():
        vids = list(dict.fromkeys(p.video_ids[outside].tolist()))
        out.append(Finding(OUTSIDE_VIDEO, f"{int(outside.sum())} prediction(s) start before 0 s or "
                           f"end after their video; scored as they are (not clipped): "
                           f"{examples(vids)}"))
    if num_classes is not None:
        bad = p.labels >= num_classes
        if bad.any():
            vids = list(dict.fromkeys(p.video_ids[bad].tolist()))
            out.append(Finding(LABEL_RANGE, f"{int(bad.sum())} prediction(s) with label ids "
                               f"{sorted(set(p.labels[bad].tolist()))[:10]} outside [0, "
                               f"{num_classes}), video(s) {examples(vids)}"))
    if gt_classes is not None and len(p):
        lost = ~np.isin(p.labels, gt_classes)
        if lost.any():
            out.append(Finding(NO_GROUND_TRUTH, f"{int(lost.sum())} prediction(s) of class(es) "
                               f"{sorted(set(p.labels[lost].tolist()))[:10]} without ground truth in "
                               f"split '{split}' count against nothing (docs/differences.md s.4.1)"))
    if max_seg_num is not None:
        over = [v for v, n in sub.entries.items() if n > max_seg_num]
        if over:
            worst = max(sub.entries[v] for v in over)
            out.append(Finding(TOO_MANY, f"{len(over)} video(s) with more than {max_seg_num} entries "
                               f"(up to {worst}): {examples(over)}"))
    return out


def report_findings(findings: Sequence[Finding], errors: Sequence[str], where: str) -> None:
    """Raise one UserError for the findings whose kind is in ``errors`` (all of them in one line);
    log the others, one warning per kind."""
    bad = [f for f in findings if f.kind in errors]
    if bad:
        raise UserError(f"{where}: " + "; ".join(f.message for f in bad))
    for f in findings:
        logger.warning("%s", f.message)


def score_submission(sub: SubmissionFile, ann: AnnotationSet, split: str) -> MetricResult:
    """The challenge's mAP of ``sub`` on ``split`` (module docstring): ``ann`` loaded untrimmed
    (``load_annotations(..., trim=False)``), every prediction of the file kept."""
    gt = ground_truth_from_records(split_videos(ann, split))
    if len(gt) == 0:
        raise UserError(f"no ground-truth events of '{ann.task}' in split '{split}' ({ann.path}): "
                        "this split cannot be scored")
    preds: Predictions = sub.predictions
    return evaluate_map(gt, preds, CHALLENGE_TIOU_THRESHOLDS, where=f"split '{split}'")


# ------------------------------------------------------------------------------ several tasks

def task_annotation_sets(paths: Sequence[str], tasks: Sequence[str], num_classes: Sequence[int],
                         splits: Optional[Sequence[str]] = None, *, trim: bool
                         ) -> Dict[str, AnnotationSet]:
    """Each task's annotations on their own (task order): ``{task: AnnotationSet}`` with that
    task's events, TASK-LOCAL labels and label names, as ``load_annotations`` of that task alone
    gives them. ``paths``: one file holding every task's list per video, or one file per task
    (the challenge layout), or any mix, merged by video id
    (``libs/datasets/task_annotations.py``; a non-test video without a task's list is an error).
    One task: ``{task: load_annotations(paths, task, num_classes[0], splits, trim=trim)}``."""
    ann = load_task_annotations(list(paths), list(tasks), list(num_classes), splits, trim=trim)
    if len(tasks) == 1:
        return {tasks[0]: ann}
    layout = TaskLayout(tuple(tasks), tuple(int(n) for n in num_classes))
    return {task: AnnotationSet(paths=ann.paths, task=task,
                                videos=task_records(ann.videos, layout, task),
                                label_names=ann.task_label_names[task],
                                splits_found=ann.splits_found)
            for task in tasks}


def task_findings(per_task: Mapping[str, Sequence[Finding]]) -> List[Finding]:
    """The findings of several tasks as one list: a message every task has (e.g. a video written
    twice) once, the others prefixed with their task. One task: its findings as they are."""
    if len(per_task) == 1:
        return list(next(iter(per_task.values())))
    common = set.intersection(*({f.message for f in fs} for fs in per_task.values()))
    out: List[Finding] = []
    shown = set()
    for task, findings in per_task.items():
        for f in findings:
            if f.message in common:
                if f.message not in shown:
                    shown.add(f.message)
                    out.append(f)
            else:
                out.append(Finding(f.kind, f"{task}: {f.message}"))
    return out


def mean_average_map(results: Mapping[str, MetricResult]) -> float:
    """The headline of several tasks: the mean of their average mAPs (fraction in [0, 1])."""
    return float(np.mean([r.average_map for r in results.values()]))


def headline_line(results: Mapping[str, MetricResult]) -> str:
    """``Mean average mAP of N tasks (task_1 xx.xx, task_2 yy.yy): zz.zz (%)``."""
    parts = ", ".join(f"{t} {r.average_map * 100:.2f}" for t, r in results.items())
    return (f"Mean average mAP of {len(results)} tasks ({parts}): "
            f"{mean_average_map(results) * 100:.2f} (%)")
