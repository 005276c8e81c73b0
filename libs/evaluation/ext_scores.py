"""External video-level class scores fused with class-agnostic detections (docs/numerics.md s.7.5).

``test_cfg.ext_score_file`` names a JSON file of per-video class scores, either
``{video_id: [K scores]}`` or the original's ``{"results": {video_id: [K scores]}}``. Per video:

1. keep the ``num_pred`` highest-scoring detections (stable descending sort);
2. take the ``topk`` classes with the highest external scores (stable descending: ties keep the
   lower class id first);
3. emit every kept segment x each of those classes, class-major (all segments with the best class,
   then with the second, ...), label = that class id, score = ``sqrt(class_score * seg_score)`` in
   float64;
4. sort the fused rows by score, descending (stable).

Every video of the detections must have external scores; missing ones are a :class:`UserError`.
"""
from __future__ import annotations

import logging
import math
import os
from numbers import Real
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np

from libs.common.jsonfile import read_json
from libs.common.errors import UserError, format_problems

logger = logging.getLogger(__name__)

CONFIG_KEY = "test_cfg.ext_score_file"


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy array from an array-like or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _score_vector_problem(vid: str, value: Any, num_classes: int) -> Optional[str]:
    """Why ``value`` is not a valid score vector (None if it is)."""
    expected = f"expected a list of {num_classes} finite non-negative numbers"
    if not isinstance(value, list):
        return f"video '{vid}': scores are a {type(value).__name__}, {expected}"
    if len(value) != num_classes:
        return f"video '{vid}': {len(value)} scores, {expected}"
    bad = [i for i, x in enumerate(value)
           if isinstance(x, bool) or not isinstance(x, Real) or not math.isfinite(float(x))
           or float(x) < 0]
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return f"video '{vid}': score {i} is {value[i]!r}{more}, {expected}"
    return None


def load_ext_scores(path: str, num_classes: int) -> Dict[str, np.ndarray]:
    """Read and validate an external class-score JSON -> ``{video_id: (K,) float64}``.

    Accepts ``{video_id: [K scores]}`` or ``{"results": {video_id: [K scores]}}``. Every problem
    (wrong length, non-numeric, negative or non-finite scores) is reported at once, with video ids.
    """
    path = os.fspath(path)
    assert num_classes >= 1, "num_classes must be >= 1"
    data = read_json(path, f"external score file ({CONFIG_KEY})",
                     "a JSON file {video_id: [class scores]}")
    if isinstance(data, dict) and set(data) == {"results"} and isinstance(data["results"], dict):
        data = data["results"]
    if not isinstance(data, dict):
        raise UserError(f"external score file top level is a {type(data).__name__} ({path}): expected "
                        "{video_id: [class scores]} or {\"results\": {video_id: [class scores]}}")
    if not data:
        raise UserError(f"external score file has no videos ({path}): expected "
                        "{video_id: [class scores]}")
    problems = [p for vid, value in data.items()
                if (p := _score_vector_problem(vid, value, num_classes)) is not None]
    if problems:
        raise UserError(format_problems(problems, f"invalid external score file ({path}) with "
                                                  f"{len(problems)} bad video(s)"))
    scores = {str(vid): np.asarray(value, dtype=np.float64) for vid, value in data.items()}
    logger.info("external class scores %s: %d videos x %d classes", path, len(scores), num_classes)
    return scores


def check_ext_coverage(ext: Mapping[str, np.ndarray], video_ids: Iterable[str],
                       source: str = CONFIG_KEY) -> None:
    """UserError listing the videos (first 20, then a count) that have no external scores."""
    missing = [str(v) for v in video_ids if str(v) not in ext]
    if missing:
        raise UserError(format_problems(missing, f"no external class scores for {len(missing)} "
                                                 f"video(s) ({source}); missing"))


def fuse_video(segments: np.ndarray, scores: np.ndarray, class_scores: np.ndarray, topk: int,
               num_pred: int) -> tuple:
    """One video: (segments (M, 2), scores (M,) float64, labels (M,) int64), M = min(N, num_pred)*k.

    Rows come out sorted by fused score, descending (stable over the class-major order).
    """
    segments = np.asarray(segments).reshape(-1, 2)                      # (N, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)           # (N,)
    class_scores = np.asarray(class_scores, dtype=np.float64).reshape(-1)  # (K,)
    keep = np.argsort(-scores, kind="stable")[:num_pred]                # (n,)
    segs, seg_scores = segments[keep], scores[keep]
    k = min(topk, class_scores.shape[0])
    classes = np.argsort(-class_scores, kind="stable")[:k]              # (k,)
    fused = np.sqrt(class_scores[classes][:, None] * seg_scores[None, :]).reshape(-1)  # (k*n,)
    labels = np.repeat(classes.astype(np.int64), seg_scores.shape[0])  # (k*n,) class-major
    rows = np.tile(segs, (k, 1))                                        # (k*n, 2)
    order = np.argsort(-fused, kind="stable")
    return rows[order], fused[order], labels[order]


def apply_ext_scores(detections: List[dict], ext: Mapping[str, np.ndarray], topk: int = 2,
                     num_pred: int = 200, source: str = CONFIG_KEY) -> List[dict]:
    """Fuse per-video detections with external class scores (module docstring).

    ``detections``: dicts ``video_id``, ``segments`` (N, 2) seconds, ``scores`` (N,), ``labels``
    (N,) as numpy arrays or torch tensors (the input labels are replaced). Returns new dicts in the
    same order with numpy ``segments`` (input dtype), ``scores`` float64 and ``labels`` int64; other
    keys are kept. Raises :class:`UserError` if any video has no external scores or ``topk``
    exceeds the number of classes.
    """
    if topk < 1 or num_pred < 1:
        raise UserError(f"external score settings (test_cfg.ext_score_topk {topk}, ext_score_num_pred "
                        f"{num_pred}): expected positive ints")
    check_ext_coverage(ext, (d["video_id"] for d in detections), source)
    out: List[dict] = []
    n_in = n_out = 0
    for det in detections:
        vid = str(det["video_id"])
        cls = np.asarray(ext[vid], dtype=np.float64).reshape(-1)
        if topk > cls.shape[0]:
            raise UserError(f"test_cfg.ext_score_topk ({topk}, {source}): expected at most the "
                            f"{cls.shape[0]} classes of video '{vid}'")
        segs = _as_numpy(det["segments"])
        scores = _as_numpy(det["scores"])
        assert segs.reshape(-1, 2).shape[0] == scores.reshape(-1).shape[0], \
            f"video '{vid}': segments and scores differ in length"
        new_segs, new_scores, new_labels = fuse_video(segs, scores, cls, topk, num_pred)
        fused = dict(det)
        fused.update(segments=new_segs, scores=new_scores, labels=new_labels)
        out.append(fused)
        n_in += scores.size
        n_out += new_scores.size
    logger.info("external class scores (%s): %d videos, %d detections -> %d (top %d per video x %d "
                "classes)", source, len(out), n_in, n_out, num_pred, topk)
    return out
