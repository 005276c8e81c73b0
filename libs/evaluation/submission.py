"""The challenge submission JSON (docs/numerics.md s.10.2): writer, atomic file output, and reader.

Format::

    {video_id: {task: [{"label": "<class id>", "score": "<float>", "timestamps": [start_s, end_s]},
                       ...]}}

Timestamps are seconds; ``label`` is the integer class id as a string; ``score`` is the string of
the Python float of the float32 score (``repr``). Every video of the evaluated split appears (an
empty list when nothing was detected), entries in descending score, at most ``max_seg_num``.
On input, labels and scores may be strings or numbers, and timestamps need not lie inside the
video (a detector that does not clip; the challenge's evaluators score them as they are,
docs/numerics.md s.8.6); reversed or non-finite timestamps are refused (docs/differences.md s.4.4).

A unified (several-task) model writes one file with every task's list per video
(:func:`detections_to_task_submission`: ``{video_id: {action_localisation: [...],
sound_localisation: [...]}}``, labels TASK-LOCAL, each list sorted and cut on its own,
docs/numerics.md s.10.2); :func:`read_task_submission` reads such a file back per task.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from numbers import Real
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from libs.common.errors import UserError, format_problems
from libs.common.io import atomic_write_text
from libs.common.jsonfile import read_json_checked
from libs.config.tasks import TaskLayout
from libs.evaluation.events import Predictions, as_numpy


def detections_to_submission(detections: Iterable[Mapping[str, Any]], task: str,
                             video_ids: Sequence[str], max_seg_num: int) -> dict:
    """Per-video detections -> the challenge dict, videos in ``video_ids`` order.

    ``detections``: dicts ``video_id``, ``segments`` (N, 2) seconds, ``scores`` (N,), ``labels``
    (N,) (numpy arrays or torch tensors), at most one per video, each video in ``video_ids``.
    Entries are sorted by score, descending (stable: ties keep their order), then cut to
    ``max_seg_num``.
    """
    assert max_seg_num >= 1, "max_seg_num must be >= 1"
    out = {str(v): {task: []} for v in video_ids}
    for vid, segs, scores, labels in _video_columns(detections, out):
        order = np.argsort(-scores, kind="stable")[:max_seg_num]
        out[vid][task] = _entries(segs, scores, labels, order)
    return out


def _video_columns(detections: Iterable[Mapping[str, Any]], out: Mapping[str, Any]
                   ) -> Iterator[Tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(video id, segments (N, 2) float64, scores (N,) float32, labels (N,) int64)`` of each
    detection set, checked: a video of ``out``, at most one set per video, finite values."""
    seen = set()
    for det in detections:
        vid = str(det["video_id"])
        if vid not in out:
            raise ValueError(f"detections of video '{vid}', which is not in video_ids")
        if vid in seen:
            raise ValueError(f"two detection sets for video '{vid}'")
        seen.add(vid)
        segs = as_numpy(det["segments"]).astype(np.float64).reshape(-1, 2)
        scores = as_numpy(det["scores"]).astype(np.float32).reshape(-1)
        labels = as_numpy(det["labels"]).astype(np.int64).reshape(-1)
        assert len(segs) == len(scores) == len(labels), f"video '{vid}': column lengths differ"
        assert np.all(np.isfinite(segs)) and np.all(np.isfinite(scores)), \
            f"video '{vid}': non-finite detections"
        yield vid, segs, scores, labels


def _entries(segs: np.ndarray, scores: np.ndarray, labels: np.ndarray,
             order: np.ndarray) -> List[dict]:
    """The submission entries of rows ``order`` (segments (N, 2) float64 s, scores (N,) float32,
    labels (N,) int64 as written)."""
    return [{"label": str(int(labels[i])), "score": repr(float(scores[i])),
             "timestamps": [float(segs[i, 0]), float(segs[i, 1])]} for i in order]


def detections_to_task_submission(detections: Iterable[Mapping[str, Any]], layout: TaskLayout,
                                  video_ids: Sequence[str], max_seg_num: Sequence[int]) -> dict:
    """Per-video detections with JOINT labels -> ``{video_id: {task: [...] for every task}}``.

    ``layout``: the tasks and where their classes lie in the joint label space
    (libs/config/tasks.py); ``max_seg_num``: entries kept per video, one per task (task order).
    Each task's list holds the detections whose joint label lies in that task's class range, with
    TASK-LOCAL labels (joint id minus the task's offset), in descending score (stable), cut to that
    task's ``max_seg_num``; a task without detections in a video gets an empty list. One task:
    exactly :func:`detections_to_submission`.
    """
    limits = [int(n) for n in max_seg_num]
    assert len(limits) == len(layout.tasks), (limits, layout.tasks)
    if not layout.multi:
        return detections_to_submission(detections, layout.tasks[0], video_ids, limits[0])
    assert min(limits) >= 1, "max_seg_num must be >= 1"
    out = {str(v): {t: [] for t in layout.tasks} for v in video_ids}
    offsets = np.asarray(layout.offsets, dtype=np.int64)
    for vid, segs, scores, labels in _video_columns(detections, out):
        assert not len(labels) or 0 <= labels.min() <= labels.max() < layout.total_classes, \
            f"video '{vid}': labels outside the joint label space [0, {layout.total_classes})"
        task_idx = layout.task_of(labels)                                   # (N,)
        order = np.lexsort((-scores, task_idx))     # by task, then score desc; stable on ties
        bounds = np.searchsorted(task_idx[order], np.arange(len(layout.tasks) + 1))
        local = labels - offsets[task_idx]                                  # task-local ids
        for i, task in enumerate(layout.tasks):
            rows = order[bounds[i]:bounds[i + 1]][:limits[i]]
            out[vid][task] = _entries(segs, scores, local, rows)
    return out


def check_output_path(path: str, overwrite: bool) -> None:
    """Refuse, before any work, an output file that cannot be written: an existing file (unless
    ``overwrite``), a folder, or a parent path that is a file or not writable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"output path is a folder ({path}): expected a file name")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"output file already exists ({path}): pass --overwrite to replace it")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UserError(f"cannot write output ({path}): {ancestor} is a file, expected a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write output ({path}): folder {ancestor} is not writable")


def write_json(obj: Any, path: str, overwrite: bool = False) -> None:
    """Write ``obj`` as JSON atomically (temp file in the same folder, then ``os.replace``).

    An existing ``path`` is a :class:`UserError` unless ``overwrite``. Parent folders are created.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise UserError(f"output file already exists ({path}): pass --overwrite to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(obj, allow_nan=False))


def _number(x: Any) -> Optional[float]:
    """A finite float from a JSON number or numeric string, else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, Real):
        v = float(x)
    elif isinstance(x, str):
        try:
            v = float(x)
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def _label(x: Any) -> Optional[int]:
    """A non-negative int class id from an int, an integral float or an int string, else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        v = x
    elif isinstance(x, float) and math.isfinite(x) and x.is_integer():
        v = int(x)
    elif isinstance(x, str):
        try:
            v = int(x.strip())
        except ValueError:
            return None
    else:
        return None
    return v if 0 <= v < 2 ** 31 else None


def _entry(entry: Any, where: str, problems: List[str]) -> Optional[tuple]:
    """(label, score, start, end) of one entry, or None after appending its problems."""
    if not isinstance(entry, dict):
        problems.append(f"{where}: is a {type(entry).__name__}, expected a mapping with "
                        "label, score, timestamps")
        return None
    missing = [k for k in ("label", "score", "timestamps") if k not in entry]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
        return None
    n_before = len(problems)
    label = _label(entry["label"])
    if label is None:
        problems.append(f"{where}: label {entry['label']!r} is not a class id, expected a "
                        "non-negative int or int string")
    score = _number(entry["score"])
    if score is None:
        problems.append(f"{where}: score {entry['score']!r} is not a finite number, expected a "
                        "float or float string")
    ts = entry["timestamps"]
    ok_ts = (isinstance(ts, (list, tuple)) and len(ts) == 2
             and all(isinstance(t, Real) and not isinstance(t, bool) for t in ts))
    if not ok_ts:
        problems.append(f"{where}: timestamps {ts!r}, expected [start, end] numbers in seconds")
    else:
        start, end = float(ts[0]), float(ts[1])
        if not (math.isfinite(start) and math.isfinite(end)):
            problems.append(f"{where}: timestamps {ts!r} not finite, expected finite seconds")
        elif start > end:
            problems.append(f"{where}: timestamps {ts!r} reversed, expected start <= end")
    if len(problems) > n_before:
        return None
    return label, score, start, end


@dataclass
class SubmissionFile:
    """A parsed submission: ``predictions`` (one row per entry, file order), ``video_ids`` (every
    video of the file, also those without entries, file order), ``entries`` (entries per video),
    ``duplicate_ids`` (video ids written more than once: as ``json`` does, the last copy is kept)."""
    path: str
    predictions: Predictions
    video_ids: List[str]
    entries: Dict[str, int]
    duplicate_ids: List[str]


def load_submission(path: str, task: str) -> Predictions:
    """Read and validate a submission file -> :class:`Predictions` (seconds, float64 scores).

    Every problem (naming the video id and entry index) is listed in one :class:`UserError`.
    """
    return read_submission(path, task).predictions


def load_submission_with_ids(path: str, task: str) -> Tuple[Predictions, List[str]]:
    """:func:`load_submission` plus every video id of the file (also those with no entries)."""
    sub = read_submission(path, task)
    return sub.predictions, sub.video_ids


def read_submission(path: str, task: str) -> SubmissionFile:
    """Read and validate a submission file (all problems at once, naming video and entry)."""
    return _read_tasks(path, (task,))[task]


def read_task_submission(path: str, tasks: Sequence[str]) -> Dict[str, SubmissionFile]:
    """Read and validate a submission holding the lists of several tasks -> ``{task:
    SubmissionFile}`` (task-local labels, as the file gives them), in ``tasks`` order.

    Every video must hold every task's list; every problem (naming the video, the task and the
    entry) is listed in one :class:`UserError`. One task: ``{task: read_submission(path, task)}``.
    """
    tasks = tuple(tasks)
    assert tasks and len(set(tasks)) == len(tasks), tasks
    return _read_tasks(path, tasks)


def _read_tasks(path: str, tasks: Tuple[str, ...]) -> Dict[str, SubmissionFile]:
    path = os.fspath(path)
    lists = ", ".join(f"'{t}': [...]" for t in tasks)
    data, dups = read_json_checked(path, "submission", f"a JSON file {{video_id: {{{lists}}}}}")
    if not isinstance(data, dict):
        raise UserError(f"submission top level is a {type(data).__name__} ({path}): expected a "
                        f"mapping {{video_id: {{{lists}}}}}")
    problems: List[str] = []
    vids: Dict[str, List[str]] = {t: [] for t in tasks}
    rows: Dict[str, List[tuple]] = {t: [] for t in tasks}
    entries_per_video: Dict[str, Dict[str, int]] = {t: {} for t in tasks}
    several = len(tasks) > 1
    for vid, value in data.items():
        if not isinstance(value, dict):
            problems.append(f"video '{vid}': is a {type(value).__name__}, expected a mapping "
                            f"{{{lists}}}")
            continue
        for task in tasks:
            if task not in value:
                found = ", ".join(repr(k) for k in value) or "none"
                problems.append(f"video '{vid}': missing '{task}' list (keys found: {found})")
                continue
            entries = value[task]
            if not isinstance(entries, list):
                problems.append(f"video '{vid}': '{task}' is a {type(entries).__name__}, expected "
                                "a list")
                continue
            entries_per_video[task][str(vid)] = len(entries)
            where = f"video '{vid}' '{task}'" if several else f"video '{vid}'"
            for i, entry in enumerate(entries):
                parsed = _entry(entry, f"{where} entry {i}", problems)
                if parsed is not None:
                    vids[task].append(str(vid))
                    rows[task].append(parsed)
    if problems:
        raise UserError(format_problems(problems, f"invalid submission ({path}) with "
                                                  f"{len(problems)} problem(s)"))
    out: Dict[str, SubmissionFile] = {}
    for task in tasks:
        arr = np.asarray(rows[task], dtype=np.float64).reshape(-1, 4)
        preds = Predictions(np.asarray(vids[task], dtype=str), arr[:, 2], arr[:, 3],
                            np.asarray([r[0] for r in rows[task]], dtype=np.int64), arr[:, 1])
        out[task] = SubmissionFile(path=path, predictions=preds, video_ids=[str(v) for v in data],
                                   entries=entries_per_video[task],
                                   duplicate_ids=[d.key for d in dups if d.where == ()])
    return out
