"""Perception Test annotation JSON -> validated :class:`VideoRecord` lists (docs/numerics.md s.1.1).

Times are in seconds here: the file stores event timestamps in microseconds and the video length as
``num_frames`` / ``frame_rate`` (the original multiplied them: a bug fixed here). Every problem of
the file(s) is collected and reported at once in one :class:`UserError` naming the video ids.
Several files (the challenge ships one per split) are merged by video id: a video in two files is
an error naming both. Files are read strictly (docs/numerics.md s.1.1): UTF-8 only, a video id
written twice in one file is an error (``json`` would keep the last copy silently), and video ids
must be plain file names, since they name the feature files.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from libs.common.errors import UserError, format_problems
from libs.common.jsonfile import describe_where, read_json_checked

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
US_PER_SECOND = 1e6


@dataclass
class VideoRecord:
    """One video of the annotation file(s). ``segments`` are seconds, clipped to ``[0, duration]``
    (unless loaded with ``trim=False``: then as the file gives them)."""
    video_id: str
    split: str
    num_frames: int
    frame_rate: float
    duration: float          # seconds = num_frames / frame_rate
    segments: np.ndarray     # (N, 2) float64 seconds
    labels: np.ndarray       # (N,) int64 (joint label space with several tasks)
    # several tasks (task_annotations.py): one flag per task, False = the video has no list of
    # that task (dataset.allow_missing_task); () = every task annotated
    annotated: Tuple[bool, ...] = ()

    @property
    def num_events(self) -> int:
        return int(self.labels.shape[0])

    def is_annotated(self, index: int) -> bool:
        """Whether task ``index`` (task order) is annotated for this video."""
        return not self.annotated or bool(self.annotated[index])


@dataclass
class AnnotationSet:
    """The videos of the requested splits (file order, files in list order) and the label names of
    every video of every file. Several tasks (task_annotations.py): ``task`` joins the names with
    '+', ``label_names`` is the joint map, ``task_label_names`` the task-local maps; one task:
    ``tasks == (task,)`` and ``task_label_names == {task: label_names}``."""
    paths: List[str]
    task: str
    videos: List[VideoRecord]
    label_names: Dict[int, str] = field(default_factory=dict)
    splits_found: List[str] = field(default_factory=list)
    tasks: Tuple[str, ...] = ()
    task_label_names: Dict[str, Dict[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks:
            self.tasks = (self.task,)
        if not self.task_label_names and len(self.tasks) == 1:
            self.task_label_names = {self.tasks[0]: self.label_names}

    @property
    def path(self) -> str:
        """The file(s), for messages."""
        return ", ".join(self.paths)

    def __len__(self) -> int:
        return len(self.videos)


def annotation_paths(value: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[str]:
    """``dataset.annotation_file`` (one path or a list of paths) as a list of path strings."""
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def distinct_annotation_paths(value: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
                              ) -> List[str]:
    """:func:`annotation_paths`; a file listed twice is a UserError."""
    paths = annotation_paths(value)
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise UserError(f"annotation file listed twice (dataset.annotation_file): {', '.join(twice)}; "
                        "expected each file once")
    return paths


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, float) and math.isfinite(x) and x.is_integer()


def video_id_problem(vid: str) -> Optional[str]:
    """Why ``vid`` is not a plain file name (it names ``<folder>/<vid><ext>`` feature files), or
    None. Refused: empty, path separators, NUL, a leading '.' (hidden files, '.', '..')."""
    if not vid:
        return "is empty"
    bad = [c for c in ("/", "\\", "\0") if c in vid]
    if bad:
        return f"contains {' and '.join(repr(c) for c in bad)}"
    if vid.startswith("."):
        return "starts with '.'"
    return None


def read_annotation_json(path: str) -> Dict[str, Any]:
    """The file's top-level mapping; non-UTF-8 bytes, duplicate keys, a non-mapping top level and
    an empty mapping are UserErrors naming the file."""
    data, dups = read_json_checked(path, "annotation file",
                                   "a Perception Test JSON file {video_id: {...}}")
    if not isinstance(data, dict):
        raise UserError(f"annotation file top level is a {type(data).__name__} ({path}): "
                        "expected a mapping {video_id: {...}}")
    if dups:
        shown = []
        for d in dups[:5]:
            if d.where:
                shown.append(f"key '{d.key}' {d.count} times in {describe_where(d.where)}")
            else:
                shown.append(f"video '{d.key}' {d.count} times")
        more = f" (and {len(dups) - 5} more)" if len(dups) > 5 else ""
        what = "video id" if all(not d.where for d in dups) else "key"
        raise UserError(f"duplicate {what} in annotation file ({path}): {'; '.join(shown)}{more}; "
                        f"expected each key once per object (json keeps only the last copy)")
    if not data:
        raise UserError(f"annotation file has no videos ({path}): expected {{video_id: {{...}}}}")
    return data


def parse_metadata(vid: str, entry: Any, problems: List[str]) -> Optional[tuple]:
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


def file_videos(path: str, problems: List[str]) -> Iterator[Tuple[str, Dict[str, Any], tuple]]:
    """``(video id, entry, (split, num_frames, frame_rate))`` of each video of the file whose id
    and metadata are valid; the others' problems are appended to ``problems``."""
    for vid, entry in read_annotation_json(path).items():
        why = video_id_problem(vid)
        if why is not None:
            problems.append(f"video id {vid!r} {why}, expected a plain file name (video ids name "
                            "the feature files)")
            continue
        meta = parse_metadata(vid, entry, problems)
        if meta is not None:
            yield vid, entry, meta


# label id -> label name -> the (file, video id) pairs that use that name, in file order
NameUses = Dict[int, Dict[str, List[Tuple[str, str]]]]


def parse_events(vid: str, events: List[Any], num_classes: int, duration: float, end_tolerance: float,
                  trim: bool, problems: List[str]) -> Optional[tuple]:
    """Events -> (segments (N, 2) float64 s, labels (N,) int64, #clipped, {label_id: [names]}),
    or None after problems. ``trim``: clip ends to ``duration`` (else the segments are as given)."""
    n_before = len(problems)
    stamps, labels = [], []
    names: Dict[int, List[str]] = {}
    for i, ev in enumerate(events):       # messages built only for bad events (a hot loop)
        if not isinstance(ev, dict):
            problems.append(f"video '{vid}' event {i}: is a {type(ev).__name__}, expected a mapping")
            continue
        lid = ev.get("label_id")
        if not _is_int(lid):
            problems.append(f"video '{vid}' event {i}: label_id is {lid!r}, expected an int in "
                            f"[0, {num_classes})")
            continue
        lid = int(lid)
        if not 0 <= lid < num_classes:
            problems.append(f"video '{vid}' event {i}: label_id {lid} out of range, expected an int "
                            f"in [0, {num_classes})")
            continue
        name = ev.get("label")
        if isinstance(name, str) and name not in names.setdefault(lid, []):
            names[lid].append(name)
        ts = ev.get("timestamps")
        if not (isinstance(ts, (list, tuple)) and len(ts) == 2 and all(_is_number(t) for t in ts)):
            problems.append(f"video '{vid}' event {i}: timestamps is {ts!r}, expected [start_us, "
                            "end_us]")
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
    n_past = int((segs[:, 1] > duration).sum())
    if not trim:
        return segs, labs, 0, names
    clipped = np.minimum(segs, duration)
    short = np.nonzero(clipped[:, 0] >= clipped[:, 1])[0]
    for j in short[:5]:
        problems.append(f"video '{vid}': event [{segs[j, 0]:.6g}, {segs[j, 1]:.6g}] s starts at or "
                        f"after the video end {duration:.6g} s")
    if len(short):
        return None
    return clipped, labs, n_past, names


def label_name_problems(uses: NameUses, several_files: bool) -> List[str]:
    """One problem per odd name: a label id named differently from the name most videos use (a
    tie keeps the name seen first), naming the odd videos and both names."""
    out: List[str] = []

    def video(file_vid: Tuple[str, str]) -> str:
        return f"'{file_vid[1]}'" + (f" ({file_vid[0]})" if several_files else "")

    for lid, by_name in sorted(uses.items()):
        if len(by_name) < 2:
            continue
        usual = max(by_name, key=lambda n: len(by_name[n]))   # first of the most used names
        for name, where in by_name.items():
            if name == usual:
                continue
            more = f" and {len(where) - 1} more video(s)" if len(where) > 1 else ""
            n_usual = len(by_name[usual])
            out.append(f"video {video(where[0])}{more}: label_id {lid} named {name!r}, but "
                       f"{usual!r} in {n_usual} other video(s) (e.g. {video(by_name[usual][0])}), "
                       "expected one name per label_id")
    return out


def read_scope(path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
               splits: Optional[Sequence[str]], end_tolerance: float, trim: bool
               ) -> Tuple[List[str], float, Optional[Set[str]]]:
    """What a loader reads: the distinct annotation files, the end tolerance (``inf`` without
    ``trim``: events as given) and the wanted splits, lower-cased (None: all)."""
    paths = distinct_annotation_paths(path)
    wanted = None if splits is None else {str(s).lower() for s in splits}
    return paths, (end_tolerance if trim else math.inf), wanted


def load_annotations(path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], task: str,
                     num_classes: int, splits: Optional[Sequence[str]] = None,
                     end_tolerance: float = 1.0, *, trim: bool = True) -> AnnotationSet:
    """Read and validate Perception Test annotation file(s) (one path or a list, merged by video id).

    ``task`` picks the event list (``sound_localisation`` / ``action_localisation``); ``splits``
    filters the returned videos (all if None). Label names come from every video of every file.
    ``trim`` (training, eval.py): event ends past the video are clipped to the duration (within
    ``end_tolerance``); ``trim=False`` (the challenge scorer): events as given, any end accepted.
    Raises one :class:`UserError` listing every problem (first 20, then a count).
    """
    paths, end_tolerance, wanted = read_scope(path, splits, end_tolerance, trim)
    several = len(paths) > 1
    problems: List[str] = []
    uses: NameUses = {}
    home: Dict[str, Tuple[str, str]] = {}      # video id -> (file, split) where it was first seen
    videos: List[VideoRecord] = []
    found: List[str] = []
    n_clipped = 0
    for p in paths:
        file_problems: List[str] = []
        for vid, entry, meta in file_videos(p, file_problems):
            split, num_frames, frame_rate = meta
            if vid in home:
                other, other_split = home[vid]
                note = f", split '{other_split}' there and '{split}' here" if other_split != split else ""
                problems.append(f"video '{vid}' in two annotation files ({other} and {p}{note}): "
                                "expected each video in one file")
                continue
            home[vid] = (p, split)
            if split not in found:
                found.append(split)
            duration = num_frames / frame_rate
            events = entry.get(task)
            if events is None:
                if split != "test":
                    file_problems.append(f"video '{vid}': missing '{task}' list (split {split}), expected "
                                         "a list of events (only test videos may omit it)")
                    continue
                events = []
            if not isinstance(events, list):
                file_problems.append(f"video '{vid}': '{task}' is a {type(events).__name__}, expected a list")
                continue
            parsed = parse_events(vid, events, num_classes, duration, end_tolerance, trim,
                                   file_problems)
            if parsed is None:
                continue
            segs, labs, n_clip, names = parsed
            for lid, used in names.items():
                for name in used:
                    uses.setdefault(lid, {}).setdefault(name, []).append((p, vid))
            if wanted is not None and split not in wanted:
                continue
            n_clipped += n_clip
            videos.append(VideoRecord(vid, split, num_frames, frame_rate, duration, segs, labs))
        problems.extend(f"{p}: {x}" if several else x for x in file_problems)
    problems.extend(label_name_problems(uses, several))
    shown = ", ".join(paths)
    if problems:
        raise UserError(format_problems(problems, f"invalid annotation file{'s' if several else ''} "
                                                  f"({shown}) with {len(problems)} problem(s)"))
    if wanted is not None and not videos:
        raise UserError(f"no video of split(s) {', '.join(sorted(wanted))} in the annotation "
                        f"file{'s' if several else ''} ({shown}): splits found are "
                        f"{', '.join(found) or 'none'}")
    logger.info("annotations %s: %d videos (%s), %d events of '%s'", shown, len(videos),
                ", ".join(sorted(wanted)) if wanted else "all splits",
                sum(v.num_events for v in videos), task)
    if n_clipped:
        logger.info("annotations %s: %d events ending past the video end (within %g s) clipped",
                    shown, n_clipped, end_tolerance)
    label_names = {lid: next(iter(by_name)) for lid, by_name in sorted(uses.items())}
    return AnnotationSet(paths=paths, task=task, videos=videos, label_names=label_names,
                         splits_found=found)
