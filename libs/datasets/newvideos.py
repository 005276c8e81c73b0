"""New videos without an annotation file: the videos of feature folders and their durations.

Used by ``tools/predict.py`` (a checkpoint on a folder of features) and
``tools/make_annotations.py`` (a metadata-only annotation file). A video's duration (seconds)
comes from a CSV (exact) or from its primary feature rows (an estimate, docs/numerics.md s.1.4):

- ``rows_per_second R``: ``D = T / R``;
- feature kind ``beats``: BEATs gives ``N_a = 8 floor((100 D - 2) / 16)`` rows (8 frequency tokens
  per 160 ms patch, ~50 rows/s), inverted as ``D = (N_a / 8 * 16 + 2) / 100`` (the shortest video
  giving ``N_a`` rows; the true video may be up to 0.16 s longer);
- feature kind ``umt`` / ``videomae``: one row per 4 frames at 30 fps, ``D = T / 7.5``.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from libs.common.errors import UserError, format_problems

from .annotations import AnnotationSet, VideoRecord, video_id_problem
from .features import FeatureProblem, FeatureSource

logger = logging.getLogger(__name__)

FILE_EXTS = (".npy", ".pt")
BEATS_FREQ_TOKENS = 8
VIDEO_ROWS_PER_S = 7.5


def _beats_duration(rows: np.ndarray) -> np.ndarray:
    """D = (N_a/8*16 + 2)/100: inverse of N_a = 8*floor((100*D - 2)/16)."""
    return (rows / BEATS_FREQ_TOKENS * 16.0 + 2.0) / 100.0


FEATURE_KINDS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "beats": _beats_duration,
    "umt": lambda rows: rows / VIDEO_ROWS_PER_S,
    "videomae": lambda rows: rows / VIDEO_ROWS_PER_S,
}


def list_feature_videos(path: str) -> Tuple[List[str], str]:
    """Sorted video ids of a feature folder (``<id>.npy|.pt``) or ``.h5`` file, and the extension.

    Hidden files (a leading '.') are skipped; an .h5 key that is not a plain file name is an error.
    """
    if path.lower().endswith(".h5"):
        if not os.path.isfile(path):
            raise UserError(f"feature file not found ({path}): expected an .h5 file with one dataset "
                            "per video id")
        import h5py
        try:
            with h5py.File(path, "r") as f:
                ids = sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))
        except OSError as err:
            raise UserError(f"unreadable h5 feature file ({path}): {err}") from None
        if not ids:
            raise UserError(f"no datasets in the feature file ({path}): expected one per video id")
        bad = [f"{v!r} {video_id_problem(v)}" for v in ids if video_id_problem(v)]
        if bad:
            raise UserError(format_problems(bad, f"video ids that are not plain file names ({path})"))
        return ids, ".h5"
    if not os.path.isdir(path):
        raise UserError(f"feature folder not found ({path}): expected a folder of <video_id>.npy|.pt "
                        "files or an .h5 file")
    by_ext: Dict[str, List[str]] = {e: [] for e in FILE_EXTS}
    for name in os.listdir(path):
        stem, ext = os.path.splitext(name)
        if ext in by_ext and stem and not name.startswith("."):
            by_ext[ext].append(stem)
    found = [e for e in FILE_EXTS if by_ext[e]]
    if not found:
        raise UserError(f"no feature files in the folder ({path}): expected <video_id>.npy or "
                        "<video_id>.pt files")
    if len(found) > 1:
        raise UserError(f"feature folder holds both .npy and .pt files ({path}): expected one kind")
    return sorted(by_ext[found[0]]), found[0]


def _positive_number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def read_video_csv(path: str, columns: Sequence[str], expected: str,
                   check: Optional[Callable[[str, float], Optional[str]]] = None
                   ) -> Tuple[str, Dict[str, float]]:
    """``(column, {video_id: value})`` from a CSV whose header has ``video_id`` and the first of
    ``columns`` found; values must be positive numbers (and pass ``check(column, value)``, which
    returns a problem or None), each video listed once. All problems at once, naming the line;
    ``expected`` describes the header for messages."""
    if not os.path.isfile(path):
        raise UserError(f"CSV file not found ({path}): expected a header {expected}")
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read CSV file ({path}): {err}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    header = [c.strip() for c in rows[0]] if rows else []
    col = next((c for c in columns if c in header), None)
    if "video_id" not in header or col is None:
        raise UserError(f"bad CSV header ({path}): got {','.join(header) or 'nothing'}, expected "
                        f"{expected}")
    i_vid, i_val = header.index("video_id"), header.index(col)
    out: Dict[str, float] = {}
    problems: List[str] = []
    for line, row in enumerate(rows[1:], start=2):
        vid = row[i_vid].strip() if i_vid < len(row) else ""
        text = row[i_val].strip() if i_val < len(row) else ""
        value = _positive_number(text)
        if not vid:
            problems.append(f"line {line}: empty video_id")
        elif vid in out:
            problems.append(f"line {line}: video '{vid}' listed twice")
        elif value is None:
            problems.append(f"line {line}: video '{vid}': {col} is {text!r}, expected a positive number")
        elif check is not None and check(col, value) is not None:
            problems.append(f"line {line}: video '{vid}': {check(col, value)}")
        else:
            out[vid] = value
    if problems:
        raise UserError(format_problems(problems, f"invalid CSV file ({path}) with {len(problems)} "
                                                  "problem(s)"))
    if not out:
        raise UserError(f"CSV file has no videos ({path}): expected one row per video after the header")
    return col, out


def read_durations_csv(path: str) -> Dict[str, float]:
    """``{video_id: seconds}`` from a CSV with header ``video_id,duration`` (or ``duration_s``)."""
    return read_video_csv(path, ("duration", "duration_s"), "video_id,duration (seconds)")[1]


def durations_from_rows(rows: np.ndarray, feature_kind: Optional[str] = None,
                        rows_per_second: Optional[float] = None) -> np.ndarray:
    """Video durations (s) from primary feature row counts ``rows`` (V,): a ``feature_kind``
    preset (module docstring) or ``T / rows_per_second``."""
    rows = np.asarray(rows, dtype=np.float64)
    if feature_kind is not None:
        if feature_kind == "beats" and np.any(rows % BEATS_FREQ_TOKENS):
            logger.warning("%d BEATs feature files have a row count that is not a multiple of %d",
                           int(np.count_nonzero(rows % BEATS_FREQ_TOKENS)), BEATS_FREQ_TOKENS)
        return FEATURE_KINDS[feature_kind](rows)
    assert rows_per_second is not None and rows_per_second > 0
    return rows / rows_per_second


def feature_rows(path: str, ext: str, video_ids: Sequence[str]) -> np.ndarray:
    """Row counts T (V,) of the videos' feature files (headers only); all problems at once."""
    source = FeatureSource("features", path, ext, dim=0)
    rows, problems = [], []
    for vid in video_ids:
        try:
            shape = source.shape(vid)
        except FeatureProblem as err:
            problems.append(str(err))
            continue
        if len(shape) != 2 or shape[0] < 1:
            problems.append(f"video '{vid}': features of shape {tuple(shape)}, expected (T >= 1, C)")
            continue
        rows.append(shape[0])
    source.close()
    if problems:
        raise UserError(format_problems(problems, f"unreadable feature files ({path}) for "
                                                  f"{len(problems)} video(s)"))
    return np.asarray(rows, dtype=np.int64)


def new_video_set(video_ids: Sequence[str], durations: Sequence[float],
                  task: Union[str, Sequence[str]], label_names: Dict[int, str],
                  source: str) -> AnnotationSet:
    """An :class:`AnnotationSet` of unlabelled videos (split 'test', no events) with the given
    durations (seconds); ``num_frames``/``frame_rate`` are 0 (unknown). ``task``: the task or
    the tasks of the model; ``source`` names where the videos came from, for messages."""
    tasks = (task,) if isinstance(task, str) else tuple(task)
    videos = [VideoRecord(str(v), "test", 0, 0.0, float(d), np.zeros((0, 2), dtype=np.float64),
                          np.zeros(0, dtype=np.int64)) for v, d in zip(video_ids, durations)]
    return AnnotationSet(paths=[source], task="+".join(tasks), videos=videos,
                         label_names=dict(label_names), splits_found=["test"], tasks=tasks)
