"""Perception Test annotation JSON -> validated :class:`VideoRecord` lists (docs/numerics.md s.1.1).

Times are in seconds here: the file stores event timestamps in microseconds and the video length as
``num_frames`` / ``frame_rate`` (the original multiplied them: a bug fixed here). Every problem of
the file is collected and reported at once in one :class:`UserError` naming the video ids.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from libs.common.io import read_json
from libs.common.errors import UserError, format_problems

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
US_PER_SECOND = 1e6


@dataclass
class VideoRecord:
    """One video of the annotation file. ``segments`` are seconds, clipped to ``[0, duration]``."""
    video_id: str
    split: str
    num_frames: int
    frame_rate: float
    duration: float          # seconds = num_frames / frame_rate
    segments: np.ndarray     # (N, 2) float64 seconds
    labels: np.ndarray       # (N,) int64

    @property
    def num_events(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class AnnotationSet:
    """The videos of the requested splits (file order) and the label names of the whole file."""
    path: str
    task: str
    videos: List[VideoRecord]
    label_names: Dict[int, str] = field(default_factory=dict)
    splits_found: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.videos)


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, float) and math.isfinite(x) and x.is_integer()


def _read_json(path: str) -> Dict[str, Any]:
    data = read_json(path, "annotation file", "a Perception Test JSON file {video_id: {...}}")
    if not isinstance(data, dict):
        raise UserError(f"annotation file top level is a {type(data).__name__} ({path}): "
                        "expected a mapping {video_id: {...}}")
    if not data:
        raise UserError(f"annotation file has no videos ({path}): expected {{video_id: {{...}}}}")
    return data


def _parse_metadata(vid: str, entry: Any, problems: List[str]) -> Optional[tuple]:
    """(split, num_frames, frame_rate) or None after appending problems."""
    if not isinstance(entry, dict):
        problems.append(f"video '{vid}': entry is a {type(entry).__name__}, expected a mapping")
        return None
    meta = entry.get("metadata")
    if not isinstance(meta, dict):
        problems.append(f"video '{vid}': missing 'metadata' mapping")
        return None
    ok = True
    split = meta.get("split")
    if split is None:
        problems.append(f"video '{vid}': missing metadata.split")
        ok = False
    elif not isinstance(split, str) or split.lower() not in SPLITS:
        problems.append(f"video '{vid}': unknown split {split!r}, expected one of {', '.join(SPLITS)}")
        ok = False
    for key, valid, expected in (("num_frames", _is_int, "a positive int"),
                                 ("frame_rate", _is_number, "a positive number")):
        value = meta.get(key)
        if value is None:
            problems.append(f"video '{vid}': missing metadata.{key}")
            ok = False
        elif not valid(value) or value <= 0:
            problems.append(f"video '{vid}': metadata.{key} is {value!r}, expected {expected}")
            ok = False
    if not ok:
        return None
    num_frames, frame_rate = meta["num_frames"], meta["frame_rate"]
    return split.lower(), int(num_frames), float(frame_rate)


def _parse_events(vid: str, events: List[Any], num_classes: int, duration: float, end_tolerance: float,
                  names: Dict[int, str], problems: List[str]) -> Optional[tuple]:
    """Events -> (segments (N, 2) float64 s, labels (N,) int64, #clipped), or None after problems."""
    n_before = len(problems)
    stamps, labels = [], []
    for i, ev in enumerate(events):
        where = f"video '{vid}' event {i}"
        if not isinstance(ev, dict):
            problems.append(f"{where}: is a {type(ev).__name__}, expected a mapping")
            continue
        lid = ev.get("label_id")
        if not _is_int(lid):
            problems.append(f"{where}: label_id is {lid!r}, expected an int in [0, {num_classes})")
            continue
        lid = int(lid)
        if not 0 <= lid < num_classes:
            problems.append(f"{where}: label_id {lid} out of range, expected an int in [0, {num_classes})")
            continue
        name = ev.get("label")
        if isinstance(name, str):
            old = names.setdefault(lid, name)
            if old != name:
                problems.append(f"{where}: label_id {lid} named {name!r} but {old!r} elsewhere, "
                                "expected one name per label_id")
        ts = ev.get("timestamps")
        if not (isinstance(ts, (list, tuple)) and len(ts) == 2 and all(_is_number(t) for t in ts)):
            problems.append(f"{where}: timestamps is {ts!r}, expected [start_us, end_us]")
            continue
        stamps.append((float(ts[0]), float(ts[1])))
        labels.append(lid)
    segs = np.asarray(stamps, dtype=np.float64).reshape(-1, 2) / US_PER_SECOND  # (N, 2) s
    labs = np.asarray(labels, dtype=np.int64)                                    # (N,)
    # Range checks, vectorised over the events that parsed.
    neg = np.nonzero((segs < 0).any(axis=1))[0]
    rev = np.nonzero(segs[:, 0] > segs[:, 1])[0]
    zero = np.nonzero(segs[:, 0] == segs[:, 1])[0]
    past = np.nonzero(segs[:, 1] > duration + end_tolerance)[0]
    for idx, what in ((neg, "negative timestamps"), (rev, "reversed timestamps (start > end)"),
                      (zero, "zero-length event (start == end)")):
        for j in idx[:5]:
            problems.append(f"video '{vid}': {what} [{segs[j, 0]:.6g}, {segs[j, 1]:.6g}] s")
        if len(idx) > 5:
            problems.append(f"video '{vid}': {len(idx) - 5} more events with {what}")
    for j in past[:5]:
        problems.append(f"video '{vid}': event ends at {segs[j, 1]:.6g} s, past the video end "
                        f"{duration:.6g} s by more than end_tolerance {end_tolerance:g} s")
    if len(past) > 5:
        problems.append(f"video '{vid}': {len(past) - 5} more events past the video end")
    if len(problems) > n_before:
        return None
    clipped = np.minimum(segs, duration)
    short = np.nonzero(clipped[:, 0] >= clipped[:, 1])[0]
    for j in short[:5]:
        problems.append(f"video '{vid}': event [{segs[j, 0]:.6g}, {segs[j, 1]:.6g}] s starts at or "
                        f"after the video end {duration:.6g} s")
    if len(short):
        return None
    return clipped, labs, int((segs[:, 1] > duration).sum())


def load_annotations(path: str, task: str, num_classes: int, splits: Optional[Sequence[str]] = None,
                     end_tolerance: float = 1.0) -> AnnotationSet:
    """Read and validate a Perception Test annotation file.

    ``task`` picks the event list (``sound_localisation`` / ``action_localisation``); ``splits``
    filters the returned videos (all if None). Label names come from every video of the file.
    Raises one :class:`UserError` listing every problem (first 20, then a count).
    """
    path = str(path)
    data = _read_json(path)
    wanted = None if splits is None else {str(s).lower() for s in splits}
    problems: List[str] = []
    names: Dict[int, str] = {}
    videos: List[VideoRecord] = []
    found: List[str] = []
    n_clipped = 0
    for vid, entry in data.items():
        meta = _parse_metadata(vid, entry, problems)
        if meta is None:
            continue
        split, num_frames, frame_rate = meta
        if split not in found:
            found.append(split)
        duration = num_frames / frame_rate
        events = entry.get(task)
        if events is None:
            if split != "test":
                problems.append(f"video '{vid}': missing '{task}' list (split {split}), expected a list "
                                "of events (only test videos may omit it)")
                continue
            events = []
        if not isinstance(events, list):
            problems.append(f"video '{vid}': '{task}' is a {type(events).__name__}, expected a list")
            continue
        parsed = _parse_events(vid, events, num_classes, duration, end_tolerance, names, problems)
        if parsed is None:
            continue
        segs, labs, n_clip = parsed
        if wanted is not None and split not in wanted:
            continue
        n_clipped += n_clip
        videos.append(VideoRecord(vid, split, num_frames, frame_rate, duration, segs, labs))
    if problems:
        raise UserError(format_problems(problems, f"invalid annotation file ({path}) with "
                                                  f"{len(problems)} problem(s)"))
    if wanted is not None and not videos:
        raise UserError(f"no video of split(s) {', '.join(sorted(wanted))} in the annotation file "
                        f"({path}): splits found are {', '.join(found) or 'none'}")
    logger.info("annotations %s: %d videos (%s), %d events of '%s'", path, len(videos),
                ", ".join(sorted(wanted)) if wanted else "all splits",
                sum(v.num_events for v in videos), task)
    if n_clipped:
        logger.info("annotations %s: %d events ending past the video end (within %g s) clipped",
                    path, n_clipped, end_tolerance)
    return AnnotationSet(path=path, task=task, videos=videos, label_names=dict(sorted(names.items())),
                         splits_found=found)
