"""Ground-truth events and predictions of a split as flat columns (one row per event or per
prediction), the input of the metric (``libs/evaluation/metrics.py``) and of the report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np



def as_numpy(x: Any) -> np.ndarray:
    """A numpy array from an array-like or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class GroundTruth:
    """GT events as columns: ``video_ids`` (N,) str, ``t_start``/``t_end`` (N,) float64 seconds,
    ``labels`` (N,) int64 class ids."""
    video_ids: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.video_ids = np.asarray(self.video_ids).astype(str).reshape(-1)
        self.t_start = np.asarray(self.t_start, dtype=np.float64).reshape(-1)
        self.t_end = np.asarray(self.t_end, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.video_ids)
        assert len(self.t_start) == len(self.t_end) == len(self.labels) == n, "column lengths differ"

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Predictions(GroundTruth):
    """Detections as columns: as :class:`GroundTruth` plus ``scores`` (N,) float64."""
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        assert len(self.scores) == len(self.labels), "scores and labels lengths differ"


def ground_truth_from_records(videos: Iterable[Any]) -> GroundTruth:
    """Columns from ``VideoRecord``s (``video_id``, ``segments`` (N, 2) s, ``labels`` (N,))."""
    vids, segs, labs = [], [], []
    for v in videos:
        s = np.asarray(v.segments, dtype=np.float64).reshape(-1, 2)
        vids.append(np.full(len(s), str(v.video_id), dtype=object))
        segs.append(s)
        labs.append(np.asarray(v.labels, dtype=np.int64).reshape(-1))
    if not segs:
        return GroundTruth(np.zeros(0, dtype=str), np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
    seg = np.concatenate(segs)
    return GroundTruth(np.concatenate(vids), seg[:, 0], seg[:, 1], np.concatenate(labs))


def predictions_from_detections(detections: Iterable[Mapping[str, Any]]) -> Predictions:
    """Columns from per-video dicts ``video_id``, ``segments`` (N, 2) s, ``scores`` (N,),
    ``labels`` (N,) (numpy arrays or torch tensors). Scores become float64 of the given values."""
    vids, segs, scores, labs = [], [], [], []
    for det in detections:
        s = as_numpy(det["segments"]).astype(np.float64).reshape(-1, 2)
        vids.append(np.full(len(s), str(det["video_id"]), dtype=object))
        segs.append(s)
        scores.append(as_numpy(det["scores"]).astype(np.float64).reshape(-1))
        labs.append(as_numpy(det["labels"]).astype(np.int64).reshape(-1))
    if not segs:
        return Predictions(np.zeros(0, dtype=str), np.zeros(0), np.zeros(0), np.zeros(0, np.int64),
                           np.zeros(0))
    seg = np.concatenate(segs)
    return Predictions(np.concatenate(vids), seg[:, 0], seg[:, 1], np.concatenate(labs),
                       np.concatenate(scores))
