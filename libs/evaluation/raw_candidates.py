"""Raw pre-NMS candidates of a model on a split, for fusion (``eval.py --save-raw DIR``).

Raw candidate directories (written by ``eval.py --save-raw DIR``)::

    DIR/meta.json         {"format", "task", "split", "num_classes", "tasks", "task_num_classes",
                           "checkpoint", "test_cfg", ...}
    DIR/<video_id>.npz    segments (N, 2) float32 SECONDS (pre-NMS, not clipped), scores (N,)
                          float32, labels (N,) int64, duration () float64 seconds

A unified (several-task) model stores its candidates with JOINT labels (task ``i``'s class ``c``
is ``offset_i + c``, libs/config/tasks.py); ``tasks`` and ``task_num_classes`` give the layout,
``task`` is then the task list and ``num_classes`` the total. A folder written before these keys
existed holds one task: ``task`` with ``num_classes`` (:func:`raw_layout`).

Candidates are stored in seconds, so models with different time grids can be pooled (the original
concatenated grid cells and needed the same 192-cell grid everywhere).
"""
from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from libs.common.jsonfile import read_json
from libs.common.errors import UserError, format_problems
from libs.common.io import atomic_path
from libs.config.schema import TASKS
from libs.config.tasks import TaskLayout
from libs.evaluation.events import as_numpy
from libs.evaluation.submission import write_json

logger = logging.getLogger(__name__)

RAW_FORMAT = "perception-raw-candidates/1"
META_NAME = "meta.json"
META_REQUIRED = ("task", "split", "num_classes")
NPZ_KEYS = ("segments", "scores", "labels", "duration")
Cands = Dict[str, Any]          # segments (N, 2) float32 s, scores (N,), labels (N,) int64, duration


def _check_video_id(video_id: str) -> str:
    vid = str(video_id)
    if not vid or vid.startswith(".") or any(c in vid for c in "/\\\0"):
        raise UserError(f"bad video id {vid!r} (raw candidates): expected a name usable as a file "
                        "name (no '/', '\\', leading '.')")
    return vid


def prepare_raw_dir(out_dir: str, overwrite: bool = False) -> Path:
    """Create ``out_dir``; one holding raw files is a :class:`UserError` unless ``overwrite``,
    which deletes its ``*.npz`` and ``meta.json`` (nothing else)."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"raw output is not a folder ({path}): expected a folder for --save-raw")
    old = sorted(path.glob("*.npz")) + ([path / META_NAME] if (path / META_NAME).exists() else [])
    if old and not overwrite:
        raise UserError(f"raw candidate folder not empty ({path}, {len(old)} files): pass "
                        "--overwrite to replace them or choose another folder")
    for f in old:
        f.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_raw_candidates(out_dir: str, video_id: str, segments_s: Any, scores: Any, labels: Any,
                        duration: float) -> str:
    """Write ``out_dir/<video_id>.npz`` atomically. ``segments_s`` (N, 2) seconds, ``scores``
    (N,), ``labels`` (N,) (numpy or torch), ``duration`` seconds. Returns the file path."""
    vid = _check_video_id(video_id)
    segs = as_numpy(segments_s).astype(np.float32).reshape(-1, 2)
    sc = as_numpy(scores).astype(np.float32).reshape(-1)
    lab = as_numpy(labels).astype(np.int64).reshape(-1)
    assert len(segs) == len(sc) == len(lab), f"video '{vid}': candidate column lengths differ"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, vid + ".npz")
    with atomic_path(path, "raw candidates") as tmp, open(tmp, "wb") as f:
        np.savez(f, segments=segs, scores=sc, labels=lab, duration=np.float64(duration))
    return path


def raw_candidate_hook(out_dir: str) -> Callable[[str, Mapping[str, Any], Any], None]:
    """A ``raw_hook`` for ``engine.predict``: converts the grid-cell candidates to (unclipped)
    seconds with the video's ``TimeGrid`` and saves them with :func:`save_raw_candidates`."""
    def hook(video_id: str, cand: Mapping[str, Any], grid: Any) -> None:
        segs = grid.to_seconds(cand["segments"].detach().float().cpu())
        save_raw_candidates(out_dir, video_id, segs, cand["scores"], cand["labels"], grid.duration)
    return hook


def layout_meta(layout: TaskLayout) -> Dict[str, Any]:
    """The meta keys that describe the tasks: ``task`` (the task, or the list of tasks),
    ``num_classes`` (total), ``tasks``, ``task_num_classes``."""
    return {"task": list(layout.tasks) if layout.multi else layout.tasks[0],
            "num_classes": layout.total_classes, "tasks": list(layout.tasks),
            "task_num_classes": list(layout.num_classes)}


def write_raw_meta(out_dir: str, meta: Mapping[str, Any],
                   layout: Optional[TaskLayout] = None) -> str:
    """Write ``out_dir/meta.json`` (``split`` required; ``task`` and ``num_classes`` too unless
    ``layout`` is given, whose :func:`layout_meta` keys then replace them; also e.g.
    ``checkpoint``, ``test_cfg``, ``video_ids``: then :func:`load_raw_dir` checks that every listed
    video has its file). A one-task meta without ``tasks`` gets them. Returns the path."""
    meta = dict(meta)
    if layout is not None:
        meta.update(layout_meta(layout))
    missing = [k for k in META_REQUIRED if k not in meta]
    assert not missing, f"raw meta lacks {missing}"
    if "tasks" not in meta:
        assert isinstance(meta["task"], str), f"raw meta: task {meta['task']!r} without a layout"
        meta.update(layout_meta(TaskLayout.single(meta["task"], int(meta["num_classes"]))))
    path = os.path.join(out_dir, META_NAME)
    write_json({"format": RAW_FORMAT, **meta}, path, overwrite=True)
    return path


def raw_layout(meta: Mapping[str, Any]) -> TaskLayout:
    """The tasks of a raw folder's (checked) meta; without ``tasks``: one task ``task`` with
    ``num_classes``."""
    if "tasks" in meta:
        return TaskLayout(tuple(meta["tasks"]), tuple(int(n) for n in meta["task_num_classes"]))
    return TaskLayout.single(str(meta["task"]), int(meta["num_classes"]))


def _is_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def _layout_problems(meta: Mapping[str, Any]) -> List[str]:
    """Problems of the task keys of a meta mapping that has ``task`` and ``num_classes``."""
    if "tasks" not in meta and "task_num_classes" not in meta:
        task = meta["task"]
        return [] if isinstance(task, str) else [f"task {task!r} is not a task name (a list of "
                                                 "tasks needs tasks and task_num_classes)"]
    tasks, counts = meta.get("tasks"), meta.get("task_num_classes")
    if not (isinstance(tasks, list) and tasks and all(t in TASKS for t in tasks)
            and len(set(tasks)) == len(tasks)):
        return [f"tasks {tasks!r}, expected a list of distinct task names ({', '.join(TASKS)})"]
    if not (isinstance(counts, list) and len(counts) == len(tasks)
            and all(_is_count(n) for n in counts)):
        return [f"task_num_classes {counts!r}, expected {len(tasks)} int(s) >= 1, one per task"]
    bad = []
    if meta["num_classes"] != sum(counts):
        bad.append(f"num_classes {meta['num_classes']!r} is not the sum of task_num_classes "
                   f"{counts}")
    task = meta["task"]
    if task != (tasks if len(tasks) > 1 else tasks[0]):
        bad.append(f"task {task!r} does not match tasks {tasks}")
    return bad


def _read_meta(folder: Path) -> Dict[str, Any]:
    path = folder / META_NAME
    meta = read_json(path, "raw candidate meta", "a folder written by eval.py --save-raw")
    bad = [] if isinstance(meta, dict) else ["not a mapping"]
    if not bad:
        bad = [f"missing '{k}'" for k in META_REQUIRED if k not in meta]
        n = meta.get("num_classes", 1)
        if not _is_count(n):
            bad.append(f"num_classes {n!r} is not an int >= 1")
        if not bad:
            bad = _layout_problems(meta)
    if bad:
        raise UserError(f"bad raw candidate meta ({path}): {'; '.join(bad)}; expected task, split, "
                        "num_classes (and tasks, task_num_classes)")
    return meta


def _read_npz(path: Path, num_classes: int, problems: List[str]) -> Optional[Cands]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                problems.append(f"{path}: missing {', '.join(missing)}")
                return None
            segs, scores, labels = z["segments"], z["scores"], z["labels"]
            duration = float(np.asarray(z["duration"]).reshape(-1)[0])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, IndexError) as err:
        problems.append(f"{path}: unreadable npz ({type(err).__name__}: {err})")
        return None
    n = len(scores)
    if segs.shape != (n, 2) or labels.shape != (n,) or scores.ndim != 1:
        problems.append(f"{path}: shapes {segs.shape}, {scores.shape}, {labels.shape}, expected "
                        "(N, 2), (N,), (N,)")
    elif not (np.all(np.isfinite(segs)) and np.all(np.isfinite(scores))):
        problems.append(f"{path}: non-finite segments or scores")
    elif n and np.any(segs[:, 1] < segs[:, 0]):
        problems.append(f"{path}: segments with end < start, expected [start, end] seconds")
    elif not np.issubdtype(labels.dtype, np.integer) or (n and (labels.min() < 0
                                                               or labels.max() >= num_classes)):
        problems.append(f"{path}: labels outside [0, {num_classes})")
    elif not (math.isfinite(duration) and duration > 0):
        problems.append(f"{path}: duration {duration}, expected > 0 seconds")
    else:
        return {"segments": segs.astype(np.float32), "scores": scores.astype(np.float32),
                "labels": labels.astype(np.int64), "duration": duration}
    return None


def load_raw_dir(path: str) -> Tuple[Dict[str, Any], Dict[str, Cands]]:
    """Read a raw candidate folder -> ``(meta, {video_id: Cands})`` (videos in file-name order).
    Every problem (missing meta, missing or corrupt npz, bad arrays) is a :class:`UserError`."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"raw candidate folder not found ({folder}): expected a folder written by "
                        "eval.py --save-raw")
    meta = _read_meta(folder)
    files = sorted(folder.glob("*.npz"))
    problems: List[str] = []
    listed = meta.get("video_ids")
    if isinstance(listed, list):
        have = {f.stem for f in files}
        problems += [f"{folder / (str(v) + '.npz')}: missing (listed in {META_NAME})"
                     for v in listed if str(v) not in have]
    if not files and not problems:
        raise UserError(f"no raw candidate files ({folder}): expected <video_id>.npz files")
    runs: Dict[str, Cands] = {}
    for f in files:
        cands = _read_npz(f, int(meta["num_classes"]), problems)
        if cands is not None:
            runs[f.stem] = cands
    if problems:
        raise UserError(format_problems(problems, f"bad raw candidates ({folder}), "
                                                  f"{len(problems)} problem(s)"))
    logger.info("%s: %d videos, %d candidates", folder, len(runs),
                sum(len(c["scores"]) for c in runs.values()))
    return meta, runs
