"""False-positive error analysis after DETAD (Alwassel et al., ECCV 2018), docs/report.md.

Every false positive at a tIoU threshold ``t`` gets one type, checked in this order (the first
that applies wins); "same class" means ground-truth events of the prediction's class in its
video, "other class" events of any other class in its video:

============================  ==================================================================
``double_detection``          same-class tIoU >= t (every such event is matched already: else the
                              greedy matching would have taken it)
``wrong_label``               other-class tIoU >= t
``localisation``              same-class tIoU in [0.1, t)
``confusion``                 other-class tIoU in [0.1, t)
``background``                tIoU < 0.1 with every event of the video (or the video has none)
============================  ==================================================================

DETAD looks only at the event of largest tIoU; the order above decides in favour of the right
class instead, so a duplicate of a matched event that overlaps an event of another class even
more is still a double detection. As in DETAD, the analysis covers the *window* of each class's
``fp_window * G_c`` top-scoring predictions (``G_c`` events of class ``c``), and the mAP gain of
an error type is the average mAP over the thresholds after removing, at each threshold, the
window's false positives of that type (classified at that threshold), minus the window's own
average mAP. Both are recomputed by :func:`libs.evaluation.metrics.evaluate_map`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from libs.evaluation.metrics import MetricResult, evaluate_map, same_video_pairs, segment_tiou
from libs.evaluation.events import GroundTruth, Predictions

logger = logging.getLogger(__name__)

ERROR_TYPES = ("double_detection", "wrong_label", "localisation", "confusion", "background")
TRUE_POSITIVE = -1          # outcome code of a true positive
NOT_COUNTED = -2            # outcome code of a prediction whose class has no ground truth
LOW_TIOU = 0.1              # below this with every event: a background error


def select_predictions(p: Predictions, keep: np.ndarray) -> Predictions:
    """The rows ``keep`` ((N,) bool or int indices) of ``p``."""
    return Predictions(p.video_ids[keep], p.t_start[keep], p.t_end[keep], p.labels[keep],
                       p.scores[keep])


def best_tiou_same_and_other(gt: GroundTruth, preds: Predictions, which: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """For the predictions ``which`` (K,) int indices: the largest tIoU with an event of the
    same video and the prediction's class, and with an event of the same video and another
    class, each (K,) float64 (0 where there is none)."""
    same, other = np.zeros(len(which)), np.zeros(len(which))
    if not len(which) or not len(gt):
        return same, other
    _, codes = np.unique(np.concatenate([gt.video_ids, preds.video_ids[which]]),
                         return_inverse=True)
    event_code, pred_code = codes[:len(gt)], codes[len(gt):]
    by_video = np.argsort(event_code, kind="stable")
    pair_pred, pair_sorted = same_video_pairs(pred_code, event_code[by_video])
    pair_event = by_video[pair_sorted]
    pred_seg = np.stack([preds.t_start[which], preds.t_end[which]], axis=1)
    event_seg = np.stack([gt.t_start, gt.t_end], axis=1)
    tiou = segment_tiou(pred_seg[pair_pred], event_seg[pair_event])
    same_class = gt.labels[pair_event] == preds.labels[which][pair_pred]
    np.maximum.at(same, pair_pred[same_class], tiou[same_class])
    np.maximum.at(other, pair_pred[~same_class], tiou[~same_class])
    return same, other


def classify_outcomes(gt: GroundTruth, preds: Predictions, is_fp: np.ndarray, tiou: float,
                      low_tiou: float = LOW_TIOU) -> np.ndarray:
    """Outcome code of every prediction at threshold ``tiou``: an index into
    :data:`ERROR_TYPES` for the false positives (``is_fp`` (N,) bool), :data:`TRUE_POSITIVE`
    for the others. Returns (N,) int64. Rules: module docstring."""
    out = np.full(len(preds), TRUE_POSITIVE, dtype=np.int64)
    which = np.nonzero(is_fp)[0]
    same, other = best_tiou_same_and_other(gt, preds, which)
    conditions = [same >= tiou, other >= tiou, same >= low_tiou, other >= low_tiou]
    out[which] = np.select(conditions, [0, 1, 2, 3], default=ERROR_TYPES.index("background"))
    return out


def outcomes_from_matches(gt: GroundTruth, preds: Predictions, result: MetricResult, tiou: float,
                          low_tiou: float = LOW_TIOU) -> np.ndarray:
    """(N,) outcome codes at ``tiou`` (one of ``result``'s thresholds) from the metric's own
    matching: error type, :data:`TRUE_POSITIVE`, or :data:`NOT_COUNTED` for predictions the
    metric ignores (their class has no ground truth)."""
    m = result.matches
    t = m.threshold_index(tiou)
    is_fp = m.counted & (m.matched_event[t] < 0)
    out = classify_outcomes(gt, preds, is_fp, float(m.tiou_thresholds[t]), low_tiou)
    out[~m.counted] = NOT_COUNTED
    return out


def window_mask(gt: GroundTruth, preds: Predictions, result: MetricResult, fp_window: float
                ) -> np.ndarray:
    """(N,) bool: the prediction is among the ``fp_window * G_c`` top-scoring of its class ``c``
    (score order of the metric, ties in input order); ignored predictions are never in it."""
    classes, counts = np.unique(gt.labels, return_counts=True)
    pos = np.searchsorted(classes, preds.labels)
    has_gt = (pos < len(classes)) & (classes[np.minimum(pos, len(classes) - 1)] == preds.labels)
    limit = np.where(has_gt, counts[np.minimum(pos, len(classes) - 1)] * fp_window, 0)
    rank = result.matches.rank_in_class
    return (rank >= 0) & (rank < np.floor(limit))


def _counts(codes: np.ndarray) -> Dict[str, int]:
    return {name: int((codes == i).sum()) for i, name in enumerate(ERROR_TYPES)}


@dataclass
class ErrorAnalysis:
    """Result of :func:`analyse_errors` (fractions in [0, 1], counts of predictions)."""
    tiou: float                              # threshold of the breakdown (``counts``)
    fp_window: float
    window_size: int                         # predictions in the window
    true_positives: int                      # in the window, at ``tiou``
    counts: Dict[str, int]                   # false positives per type at ``tiou``
    counts_per_tiou: Dict[str, Dict[str, int]]   # "0.10" -> type -> count
    window_average_map: float                # over ``gain_thresholds``
    map_gain: Dict[str, float]               # type -> average-mAP gain when removed
    profile_k: List[int]                     # top-kG windows, k = 1..fp_window
    profile: Dict[str, List[float]]          # "true_positive" / type -> fraction per k

    def to_dict(self) -> Dict[str, object]:
        return {"tiou": self.tiou, "fp_window": self.fp_window, "window_size": self.window_size,
                "true_positives": self.true_positives,
                "false_positives": int(sum(self.counts.values())), "counts": self.counts,
                "counts_per_tiou": self.counts_per_tiou,
                "window_average_map": self.window_average_map, "map_gain": self.map_gain,
                "profile": {"k": self.profile_k, **self.profile}}


def analyse_errors(gt: GroundTruth, preds: Predictions, result: MetricResult, *,
                   tiou: float = 0.5, fp_window: float = 10,
                   gain_thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
                   low_tiou: float = LOW_TIOU) -> ErrorAnalysis:
    """DETAD false-positive analysis of ``preds`` (module docstring).

    ``result`` is ``evaluate_map(gt, preds, ...)``, whose thresholds must include ``tiou``; it
    gives the score order and the window. ``gain_thresholds``: thresholds of the average mAP
    whose gain is reported (the challenge's). The window is evaluated again through the metric
    (its matching equals the full one: each class's window is a prefix of its score order).
    """
    assert fp_window > 0, "fp_window must be > 0"
    gain_thr = np.asarray(gain_thresholds, dtype=np.float64)
    in_window = window_mask(gt, preds, result, fp_window)
    window = select_predictions(preds, in_window)
    thresholds = np.unique(np.concatenate([gain_thr, [tiou]]))
    w_result = evaluate_map(gt, window, thresholds, where="error analysis window", verbose=False)
    gain_idx = [w_result.matches.threshold_index(t) for t in gain_thr]
    base = float(w_result.map_per_tiou[gain_idx].mean())
    per_thr = {float(t): outcomes_from_matches(gt, window, w_result, float(t), low_tiou)
               for t in thresholds}
    codes = per_thr[float(tiou)]
    map_gain: Dict[str, float] = {}
    for e, name in enumerate(ERROR_TYPES):
        fixed = []
        for t in gain_thr:
            keep = per_thr[float(t)] != e
            fixed.append(evaluate_map(gt, select_predictions(window, keep), (float(t),),
                                      where="error analysis window", verbose=False).map_per_tiou[0])
        map_gain[name] = float(np.mean(fixed)) - base
    # Profile: outcomes of the top-kG predictions of each class, k = 1..fp_window.
    ks = list(range(1, int(np.floor(fp_window)) + 1)) or [fp_window]
    rank = w_result.matches.rank_in_class
    classes, counts = np.unique(gt.labels, return_counts=True)
    g_of_pred = counts[np.searchsorted(classes, window.labels)]
    profile: Dict[str, List[float]] = {"true_positive": []}
    profile.update({name: [] for name in ERROR_TYPES})
    for k in ks:
        top = rank < k * g_of_pred
        n = max(int(top.sum()), 1)
        profile["true_positive"].append(float((codes[top] == TRUE_POSITIVE).sum() / n))
        for e, name in enumerate(ERROR_TYPES):
            profile[name].append(float((codes[top] == e).sum() / n))
    analysis = ErrorAnalysis(
        tiou=float(tiou), fp_window=float(fp_window), window_size=int(in_window.sum()),
        true_positives=int((codes == TRUE_POSITIVE).sum()), counts=_counts(codes),
        counts_per_tiou={f"{t:.2f}": _counts(c) for t, c in per_thr.items()},
        window_average_map=base, map_gain=map_gain, profile_k=ks, profile=profile)
    logger.info("error analysis: %d predictions in the %gG window, %d FP at tIoU %.2f: %s",
                analysis.window_size, fp_window, sum(analysis.counts.values()), tiou,
                ", ".join(f"{k} {v}" for k, v in analysis.counts.items()))
    return analysis
