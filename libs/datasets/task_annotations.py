"""Annotations of several tasks (unified model, README) -> :class:`VideoRecord` lists in the joint
label space of ``libs/config/tasks.py`` (task ``i``'s class ``c`` is joint id ``offset_i + c``).

Two layouts, any mix of them, merged by video id: one file per split holding every task's list per
video (the full Perception Test annotations), or one file per task and split (the challenge's
``challenge_action_localisation_<split>.json`` + ``challenge_sound_localisation_<split>.json``, each
with the metadata and one task's list). A video may appear in several files; its metadata must
agree between them and each task's list of a video must come from exactly one file. A non-test
video without a task's list is an error unless ``allow_missing_task``: then it is kept with
``annotated[i] = False`` (no events of that task; the task gives no loss for it). Per-video parsing
and every check of one file is that of ``annotations.py`` (docs/numerics.md s.1.1); with one task
:func:`load_task_annotations` is :func:`load_annotations` itself.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from libs.common.errors import UserError, format_problems
from libs.config.tasks import TaskLayout

from .annotations import (AnnotationSet, NameUses, VideoRecord, file_videos, label_name_problems,
                          load_annotations, parse_events, read_scope)

logger = logging.getLogger(__name__)

PathArg = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


@dataclasses.dataclass
class _Seen:
    """A video while the files are read: where it was seen, its metadata and, per task, the file
    that gave its list and the parsed events (None: list absent, or its events had problems)."""
    files: List[str]
    split: str
    num_frames: int
    frame_rate: float
    source: List[Optional[str]]
    events: List[Optional[Tuple[np.ndarray, np.ndarray, int]]]   # (segs (N, 2) s, labels, #clipped)


def _metadata_problems(vid: str, seen: _Seen, meta: tuple, path: str) -> List[str]:
    """One problem per metadata field on which ``path`` disagrees with the video's first file."""
    out = []
    for key, first, here in zip(("split", "num_frames", "frame_rate"),
                                (seen.split, seen.num_frames, seen.frame_rate), meta):
        if first != here:
            out.append(f"video '{vid}': metadata.{key} is {first!r} in {seen.files[0]} but {here!r} "
                       f"in {path}, expected the same metadata in every annotation file")
    return out


def load_task_annotations(path: PathArg, tasks: Sequence[str], num_classes: Sequence[int],
                          splits: Optional[Sequence[str]] = None, end_tolerance: float = 1.0, *,
                          trim: bool = True, allow_missing_task: bool = False) -> AnnotationSet:
    """Read and validate the annotation file(s) of ``tasks`` (one path or a list, merged by video id).

    ``num_classes``: per task, task order (label ids of task ``i`` must lie in ``[0,
    num_classes[i])``); ``splits``, ``end_tolerance``, ``trim`` as in :func:`load_annotations`.
    One task: exactly ``load_annotations(path, tasks[0], num_classes[0], ...)``. Several: the
    videos (first appearance, files in list order) carry the events of all tasks, task by task,
    segments in seconds ``(N, 2)`` and JOINT labels ``(N,)``, and ``annotated`` (one flag per
    task). Test videos may omit lists (no events, counted as annotated). Raises one
    :class:`UserError` listing every problem (first 20, then a count).
    """
    tasks = [str(t) for t in tasks]
    counts = [int(n) for n in num_classes]
    assert len(tasks) == len(counts) >= 1 and len(set(tasks)) == len(tasks), (tasks, counts)
    if len(tasks) == 1:
        return load_annotations(path, tasks[0], counts[0], splits, end_tolerance, trim=trim)
    layout = TaskLayout(tuple(tasks), tuple(counts))
    paths, end_tolerance, wanted = read_scope(path, splits, end_tolerance, trim)
    several = len(paths) > 1
    problems: List[str] = []
    uses: List[NameUses] = [{} for _ in tasks]
    seen: Dict[str, _Seen] = {}
    found: List[str] = []
    for p in paths:
        file_problems: List[str] = []
        for vid, entry, meta in file_videos(p, file_problems):
            rec = seen.get(vid)
            if rec is None:
                rec = seen[vid] = _Seen([], *meta, [None] * len(tasks), [None] * len(tasks))
                if meta[0] not in found:
                    found.append(meta[0])
            else:
                differ = _metadata_problems(vid, rec, meta, p)
                if differ:
                    problems.extend(differ)
                    for i, task in enumerate(tasks):   # no second "missing list" problem
                        if entry.get(task) is not None and rec.source[i] is None:
                            rec.source[i] = p
                    continue
            rec.files.append(p)
            duration = rec.num_frames / rec.frame_rate
            for i, task in enumerate(tasks):
                events = entry.get(task)
                if events is None:
                    continue
                if rec.source[i] is not None:
                    problems.append(f"video '{vid}': '{task}' list in two annotation files "
                                    f"({rec.source[i]} and {p}), expected each task's list in one file")
                    continue
                rec.source[i] = p
                if not isinstance(events, list):
                    file_problems.append(f"video '{vid}': '{task}' is a {type(events).__name__}, "
                                         "expected a list")
                    continue
                task_problems: List[str] = []
                parsed = parse_events(vid, events, counts[i], duration, end_tolerance, trim,
                                      task_problems)
                file_problems.extend(f"{task}: {x}" for x in task_problems)
                if parsed is None:
                    continue
                segs, labs, n_clip, names = parsed
                for lid, used in names.items():
                    for name in used:
                        uses[i].setdefault(lid, {}).setdefault(name, []).append((p, vid))
                rec.events[i] = (segs, labs, n_clip)
        problems.extend(f"{p}: {x}" if several else x for x in file_problems)
    for i, task in enumerate(tasks):
        problems.extend(f"{task}: {x}" for x in label_name_problems(uses[i], several))

    for vid, rec in seen.items():
        for i, task in enumerate(tasks):
            if rec.source[i] is None and rec.split != "test" and not allow_missing_task:
                problems.append(f"video '{vid}': missing '{task}' list (split {rec.split}) in "
                                f"{', '.join(rec.files)}, expected a list of events in one of the "
                                "files (only test videos may omit it, unless "
                                "dataset.allow_missing_task: true)")
    shown = ", ".join(paths)
    if problems:
        raise UserError(format_problems(problems, f"invalid annotation file{'s' if several else ''} "
                                                  f"({shown}) with {len(problems)} problem(s)"))

    videos: List[VideoRecord] = []
    missing = np.zeros(len(tasks), dtype=np.int64)     # returned videos without the task's list
    n_clipped = 0
    empty = (np.zeros((0, 2), dtype=np.float64), np.zeros(0, dtype=np.int64), 0)
    for vid, rec in seen.items():
        if wanted is not None and rec.split not in wanted:
            continue
        # a test video without a list counts as annotated with no events (as load_annotations)
        flags = tuple(rec.source[i] is not None or rec.split == "test" for i in range(len(tasks)))
        missing += np.logical_not(flags)
        parts = [e if e is not None else empty for e in rec.events]
        segs = np.concatenate([s for s, _, _ in parts], axis=0)                         # (N, 2) s
        labs = np.concatenate([l + off for (_, l, _), off in zip(parts, layout.offsets)])  # (N,)
        n_clipped += sum(c for _, _, c in parts)
        videos.append(VideoRecord(vid, rec.split, rec.num_frames, rec.frame_rate,
                                  rec.num_frames / rec.frame_rate, segs, labs.astype(np.int64),
                                  annotated=flags))
    if wanted is not None and not videos:
        raise UserError(f"no video of split(s) {', '.join(sorted(wanted))} in the annotation "
                        f"file{'s' if several else ''} ({shown}): splits found are "
                        f"{', '.join(found) or 'none'}")
    per_task = np.bincount(layout.task_of(np.concatenate([v.labels for v in videos])),
                           minlength=len(tasks)) if videos else np.zeros(len(tasks), np.int64)
    logger.info("annotations %s: %d videos (%s), %s", shown, len(videos),
                ", ".join(sorted(wanted)) if wanted else "all splits",
                ", ".join(f"{int(n)} events of '{t}'" for t, n in zip(tasks, per_task)))
    if n_clipped:
        logger.info("annotations %s: %d events ending past the video end (within %g s) clipped",
                    shown, n_clipped, end_tolerance)
    if allow_missing_task:
        for task, n in zip(tasks, missing):
            logger.log(logging.WARNING if n else logging.INFO,
                       "annotations %s: %d of %d videos without a '%s' list (dataset."
                       "allow_missing_task): that task gives no loss for them", shown, n,
                       len(videos), task)
    task_label_names = {
        task: {lid: next(iter(by_name)) for lid, by_name in sorted(uses[i].items())}
        for i, task in enumerate(tasks)}
    return AnnotationSet(paths=paths, task="+".join(tasks), videos=videos,
                         label_names=layout.joint_label_names(task_label_names), splits_found=found,
                         tasks=tuple(tasks), task_label_names=task_label_names)


def task_records(videos: Sequence[VideoRecord], layout: TaskLayout, task: str, *,
                 annotated_only: bool = True) -> List[VideoRecord]:
    """The per-task view of ``videos`` (joint labels): each video with ``task``'s events only,
    labels task-local, ``annotated`` as a one-task record (``()``, or ``(False,)`` for a video
    without the task's list). ``annotated_only``: leave out the videos without the task's list.
    One task: the videos as they are (a new list)."""
    if not layout.multi:
        return list(videos)
    i = layout.index(task)
    lo, hi = layout.class_range(task)
    out: List[VideoRecord] = []
    for v in videos:
        has = v.is_annotated(i)
        if annotated_only and not has:
            continue
        keep = (v.labels >= lo) & (v.labels < hi)                      # (N,) bool
        out.append(dataclasses.replace(v, segments=v.segments[keep], labels=v.labels[keep] - lo,
                                       annotated=() if has else (False,)))
    return out
