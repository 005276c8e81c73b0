"""ActivityNet-style temporal detection mAP, as the challenge scores it.

Algorithm, per class ``c`` present in the ground truth and per tIoU threshold ``thr``:

1. Predictions of class ``c`` (over all videos) are ordered by score, descending, with a *stable*
   sort: tied scores keep their input order. (The ActivityNet code uses numpy's reversed
   quicksort, whose tie order is implementation defined; only ties can differ.)
2. Each prediction walks the ground-truth events of class ``c`` in its own video, ordered by tIoU
   descending (stable: ties keep the events' input order). At each threshold independently: an
   event with ``tiou < thr`` ends the walk as a false positive; an event already matched at
   ``thr`` is skipped; otherwise the prediction is a true positive and the event is matched at
   ``thr``. A walk that ends without a match, or a video without events of ``c``, gives a false
   positive.
3. ``rec = cumTP / #events``, ``prec = cumTP / (cumTP + cumFP)`` along the sorted order (ties
   are not merged), and AP is the VOC-2011 all-point interpolation: prepend (0, 0), append
   (1, 0), make precision non-increasing from the right, sum ``d_rec * prec`` where recall
   changes.

``mAP_thr`` is the mean AP over the ground-truth classes (a class with events and no predictions
counts 0); the headline *average mAP* is the mean of ``mAP_thr`` over the thresholds. Duplicate
events are kept. A prediction whose class has no ground truth is ignored: it is never remapped
onto another class (the original code could do that: a bug). tIoU = inter / (len_p + len_g -
inter) on seconds in float64; a zero union gives tIoU 0 (the ActivityNet code would give NaN).
Thresholds are independent: the AP at one threshold does not depend on which others are
evaluated with it.

Top-k recall (k = 1, 5) follows the ActivityNet code: per class and video with events, the first
``k * n_events`` predictions by score; an event is hit if any of them has ``tIoU >= thr`` (no
one-to-one matching).

The outcome of the matching for every prediction is kept in :class:`PredictionMatches`
(``MetricResult.matches``): the error analysis of ``libs/evaluation/report`` reads it instead of
matching again (docs/report.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from libs.common.errors import UserError
from libs.evaluation.events import GroundTruth, Predictions

logger = logging.getLogger(__name__)

DEFAULT_TIOU_THRESHOLDS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
RECALL_TOP_K: Tuple[int, ...] = (1, 5)


@dataclass
class PredictionMatches:
    """Outcome of the greedy matching for every prediction, in the predictions' input order.

    ``matched_event`` (n_thr, N) int64: row (index into the :class:`GroundTruth` columns) of the
    event each prediction matched at each threshold, -1 for a false positive or an ignored
    prediction. ``rank_in_class`` (N,) int64: 0-based position of the prediction in its class's
    score order (the order of the precision-recall curve), -1 for a prediction whose class has
    no ground truth (ignored by the metric).
    """
    tiou_thresholds: np.ndarray          # (n_thr,)
    matched_event: np.ndarray            # (n_thr, N)
    rank_in_class: np.ndarray            # (N,)

    @property
    def counted(self) -> np.ndarray:
        """(N,) bool: the prediction's class has ground truth (it counts as TP or FP)."""
        return self.rank_in_class >= 0

    @property
    def is_tp(self) -> np.ndarray:
        """(n_thr, N) bool true positives."""
        return self.matched_event >= 0

    def threshold_index(self, tiou: float) -> int:
        """Index of threshold ``tiou`` (to 1e-9), else a ``KeyError`` listing the thresholds."""
        hit = np.nonzero(np.abs(self.tiou_thresholds - tiou) < 1e-9)[0]
        if not len(hit):
            raise KeyError(f"tIoU {tiou} not evaluated: thresholds are "
                           f"{[float(t) for t in self.tiou_thresholds]}")
        return int(hit[0])


@dataclass
class MetricResult:
    """Metric values as fractions in [0, 1]. ``ap`` (n_thr, n_cls), ``recall`` (n_thr, n_cls, n_k)."""
    tiou_thresholds: np.ndarray          # (n_thr,)
    class_ids: np.ndarray                # (n_cls,) sorted class ids present in the GT
    ap: np.ndarray                       # (n_thr, n_cls)
    map_per_tiou: np.ndarray             # (n_thr,)
    average_map: float
    num_gt_per_class: np.ndarray         # (n_cls,)
    num_pred_per_class: np.ndarray       # (n_cls,)
    recall: np.ndarray                   # (n_thr, n_cls, n_k) top-k x recall
    recall_top_k: Tuple[int, ...] = RECALL_TOP_K
    ignored_predictions: int = 0         # predictions whose class has no GT
    matches: Optional[PredictionMatches] = field(default=None, repr=False)

    @property
    def mean_recall(self) -> np.ndarray:
        """(n_thr, n_k) top-k recall averaged over the GT classes."""
        return self.recall.mean(axis=1)

    def to_dict(self, label_names: Optional[Mapping[int, str]] = None) -> Dict[str, Any]:
        """JSON-ready dict; threshold keys are formatted ``"0.10"``; values are fractions."""
        keys = [f"{t:.2f}" for t in self.tiou_thresholds]
        names = label_names or {}
        per_class = {}
        for j, cid in enumerate(self.class_ids):
            per_class[str(int(cid))] = {
                "name": names.get(int(cid)),
                "num_gt": int(self.num_gt_per_class[j]),
                "num_pred": int(self.num_pred_per_class[j]),
                "ap": {k: float(self.ap[i, j]) for i, k in enumerate(keys)},
                "average_ap": float(self.ap[:, j].mean()),
            }
        out: Dict[str, Any] = {
            "average_map": float(self.average_map),
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "map_per_tiou": {k: float(v) for k, v in zip(keys, self.map_per_tiou)},
        }
        mrec = self.mean_recall
        for kidx, k in enumerate(self.recall_top_k):
            out[f"recall_at_{k}x"] = {key: float(mrec[i, kidx]) for i, key in enumerate(keys)}
        out["per_class"] = per_class
        out["ignored_predictions"] = int(self.ignored_predictions)
        return out

    def format_table(self, recall: bool = False) -> str:
        """``tIoU = 0.10: mAP = xx.xx (%)`` per threshold (``recall``: plus Recall@kx columns),
        then ``Average mAP: xx.xx (%)``."""
        lines = []
        mrec = self.mean_recall
        for i, t in enumerate(self.tiou_thresholds):
            line = f"tIoU = {t:.2f}: mAP = {self.map_per_tiou[i] * 100:.2f} (%)"
            if recall:
                line += "".join(f" Recall@{k}x = {mrec[i, kidx] * 100:.2f} (%)"
                                for kidx, k in enumerate(self.recall_top_k))
            lines.append(line)
        lines.append(f"Average mAP: {self.average_map * 100:.2f} (%)")
        return "\n".join(lines)


def segment_tiou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Element-wise tIoU of paired segments ``pred`` (M, 2) and ``gt`` (M, 2), float64 -> (M,)."""
    inter = np.clip(np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]), 0.0, None)
    union = (pred[:, 1] - pred[:, 0]) + (gt[:, 1] - gt[:, 0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def interpolated_ap(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """VOC-2011 all-point AP of each row of ``prec``/``rec`` (n_thr, P) -> (n_thr,)."""
    n = prec.shape[0]
    mprec = np.concatenate([np.zeros((n, 1)), prec, np.zeros((n, 1))], axis=1)
    mrec = np.concatenate([np.zeros((n, 1)), rec, np.ones((n, 1))], axis=1)
    mprec = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
    step = mrec[:, 1:] != mrec[:, :-1]                               # (n, P + 1)
    return np.where(step, (mrec[:, 1:] - mrec[:, :-1]) * mprec[:, 1:], 0.0).sum(axis=1)


def pr_envelope(precision: np.ndarray, recall: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The interpolated precision-recall curve that :func:`interpolated_ap` integrates, for one
    class at one threshold: ``precision``/``recall`` (P,) along the score order -> the recall
    values where recall changes (K,) and the interpolated (non-increasing) precision there (K,).
    ``sum(diff([0, *recall_points]) * precision_points)`` is the AP (up to float rounding)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    step = step[step <= len(recall)]                 # the appended (1, 0) point adds nothing
    return mrec[step], mprec[step]


def precision_recall(is_tp: np.ndarray, num_events: int) -> Tuple[np.ndarray, np.ndarray]:
    """Precision and recall along the score order of one class.

    ``is_tp`` (n_thr, P) bool: whether each prediction (score order) is a true positive at each
    threshold; ``num_events``: ground-truth events of the class. Returns ``(precision, recall)``,
    both (n_thr, P) float64 fractions.
    """
    tp_cum = np.cumsum(is_tp, axis=1).astype(np.float64)
    fp_cum = np.cumsum(~is_tp, axis=1).astype(np.float64)
    return tp_cum / (tp_cum + fp_cum), tp_cum / num_events


def same_video_pairs(pred_video: np.ndarray, event_video_sorted: np.ndarray
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Every (prediction, event) pair of the same video. ``event_video_sorted`` must be sorted.

    ``pred_video`` (P,) and ``event_video_sorted`` (G,) are integer video codes. Returns
    ``(pair_pred, pair_event)``: prediction index and index into the sorted events, grouped by
    prediction, events ascending within a prediction.
    """
    first = np.searchsorted(event_video_sorted, pred_video, side="left")
    count = np.searchsorted(event_video_sorted, pred_video, side="right") - first
    pair_pred = np.repeat(np.arange(len(pred_video)), count)
    offset = np.arange(len(pair_pred)) - np.repeat(np.cumsum(count) - count, count)
    return pair_pred, np.repeat(first, count) + offset


def _rank_in_group(groups: np.ndarray) -> np.ndarray:
    """For items in order, their 0-based rank among earlier items with the same group code."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    start = np.r_[True, g[1:] != g[:-1]]
    pos = np.arange(len(g))
    first = np.maximum.accumulate(np.where(start, pos, 0))
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = pos - first
    return rank


@dataclass
class _ClassMatching:
    """Greedy matching of one class. ``matched_event`` (n_thr, P): index into the class's events
    (input order) matched by each prediction (score order), -1 for a false positive. The pairs
    (prediction, event, tIoU) of the same video feed the top-k recall."""
    matched_event: np.ndarray
    pair_pred: np.ndarray
    pair_event: np.ndarray
    pair_tiou: np.ndarray


def _match_class(pred_video: np.ndarray, pred_segments: np.ndarray, event_video: np.ndarray,
                 event_segments: np.ndarray, thresholds: np.ndarray) -> _ClassMatching:
    """The greedy walk of the module docstring for the predictions of one class.

    ``pred_video`` (P,) int video codes and ``pred_segments`` (P, 2) seconds, in score order;
    ``event_video`` (G,) and ``event_segments`` (G, 2) seconds: the class's events; ``thresholds``
    (n_thr,). Vectorised over thresholds, events and videos: predictions of different videos
    never compete for an event, so round ``r`` walks, at once for every video, the ``r``-th
    prediction of that video that has any event within reach; the Python loop runs ``max
    (predictions with an event within reach, per video)`` times.
    """
    n_thr, n_pred, n_events = len(thresholds), len(pred_video), len(event_video)
    matched_event = np.full((n_thr, n_pred), -1, dtype=np.int64)
    by_video = np.argsort(event_video, kind="stable")       # events grouped by video, order kept
    pair_pred, pair_sorted_event = same_video_pairs(pred_video, event_video[by_video])
    pair_event = by_video[pair_sorted_event]
    pair_tiou = segment_tiou(pred_segments[pair_pred], event_segments[pair_event])
    # A pair below the lowest threshold ends the walk (a false positive) at every threshold.
    within_reach = pair_tiou >= thresholds.min()
    pred, event, tiou = pair_pred[within_reach], pair_event[within_reach], pair_tiou[within_reach]
    if len(pred):
        walking = np.unique(pred)                            # predictions in score order
        round_of_pred = np.zeros(n_pred, dtype=np.int64)
        round_of_pred[walking] = _rank_in_group(pred_video[walking])
        walk_round = round_of_pred[pred]
        # Sort by round, then prediction (score order), then tIoU descending: each prediction's
        # walk in order; stable, so tied tIoUs keep the events' input order.
        order = np.lexsort((-tiou, pred, walk_round))
        pred, event, tiou, walk_round = pred[order], event[order], tiou[order], walk_round[order]
        round_bounds = np.r_[0, np.nonzero(np.diff(walk_round))[0] + 1, len(walk_round)]
        is_matched = np.zeros((n_events, n_thr), dtype=bool)   # event already taken at thr
        no_pair = np.iinfo(np.int64).max
        for lo, hi in zip(round_bounds[:-1], round_bounds[1:]):
            r_pred, r_event, r_tiou = pred[lo:hi], event[lo:hi], tiou[lo:hi]
            # The walk stops at the first event (in tIoU order) that is close enough and free:
            # those before it are either matched already (skipped) or closer still.
            close_and_free = (r_tiou[:, None] >= thresholds[None, :]) & ~is_matched[r_event]
            walk_starts = np.r_[0, np.nonzero(np.diff(r_pred))[0] + 1]
            pair_pos = np.where(close_and_free, np.arange(len(r_pred))[:, None], no_pair)
            first_pair = np.minimum.reduceat(pair_pos, walk_starts, axis=0)   # (walks, n_thr)
            walk, thr_idx = np.nonzero(first_pair != no_pair)
            taken = first_pair[walk, thr_idx]
            is_matched[r_event[taken], thr_idx] = True
            matched_event[thr_idx, r_pred[taken]] = r_event[taken]
    return _ClassMatching(matched_event, pair_pred, pair_event, pair_tiou)


def _class_recall(pred_video: np.ndarray, event_video: np.ndarray, m: _ClassMatching,
                  thresholds: np.ndarray, top_k: Sequence[int]) -> np.ndarray:
    """Top-k x recall of one class (predictions in score order) -> (n_thr, n_k)."""
    videos_sorted = np.sort(event_video, kind="stable")
    events_in_video = (np.searchsorted(videos_sorted, pred_video, side="right")
                       - np.searchsorted(videos_sorted, pred_video, side="left"))  # per prediction
    rank_in_video = _rank_in_group(pred_video)
    out = np.zeros((len(thresholds), len(top_k)))
    for kidx, k in enumerate(top_k):
        in_top = rank_in_video[m.pair_pred] < k * events_in_video[m.pair_pred]
        best_tiou = np.full(len(event_video), -1.0)
        np.maximum.at(best_tiou, m.pair_event[in_top], m.pair_tiou[in_top])
        out[:, kidx] = (best_tiou[None, :] >= thresholds[:, None]).sum(axis=1) / len(event_video)
    return out


def evaluate_map(gt: GroundTruth, preds: Predictions,
                 tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS, *,
                 where: str = "evaluated split", verbose: bool = True) -> MetricResult:
    """ActivityNet mAP of ``preds`` against ``gt`` (see the module docstring).

    The result's ``matches`` holds each prediction's outcome (:class:`PredictionMatches`).
    ``verbose=False`` drops the log lines about classes without predictions or ground truth
    (for callers that evaluate many subsets, such as the report).
    Raises :class:`UserError` when ``gt`` has no events (e.g. the test split); ``where`` names
    the split, file or task in that message and in the log lines.
    """
    thr = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if len(thr) == 0 or not np.all((thr > 0) & (thr <= 1)):
        raise UserError(f"bad tIoU thresholds ({list(tiou_thresholds)}): expected values in (0, 1]")
    if len(gt) == 0:
        raise UserError(f"no ground-truth events ({where}): the split has no ground truth to score "
                        "against; use --saveonly to write the predictions without the metric")
    if len(preds) and not np.all(np.isfinite(preds.scores)):
        raise UserError(f"non-finite prediction scores ({where}): expected finite numbers")
    # Integer video codes shared by events and predictions.
    _, codes = np.unique(np.concatenate([gt.video_ids, preds.video_ids]), return_inverse=True)
    event_code, pred_code = codes[:len(gt)], codes[len(gt):]
    class_ids = np.unique(gt.labels)
    ap = np.zeros((len(thr), len(class_ids)))
    recall = np.zeros((len(thr), len(class_ids), len(RECALL_TOP_K)))
    num_gt = np.zeros(len(class_ids), dtype=np.int64)
    num_pred = np.zeros(len(class_ids), dtype=np.int64)
    matched_event = np.full((len(thr), len(preds)), -1, dtype=np.int64)
    rank_in_class = np.full(len(preds), -1, dtype=np.int64)
    event_segments = np.stack([gt.t_start, gt.t_end], axis=1)
    pred_segments = np.stack([preds.t_start, preds.t_end], axis=1)
    # Predictions grouped by class, then by score descending; stable, so ties keep input order.
    pred_order = np.lexsort((-preds.scores, preds.labels))
    pred_label_sorted = preds.labels[pred_order]
    event_order = np.argsort(gt.labels, kind="stable")
    event_label_sorted = gt.labels[event_order]
    for j, cid in enumerate(class_ids):
        ev = event_order[np.searchsorted(event_label_sorted, cid):
                         np.searchsorted(event_label_sorted, cid, "right")]
        pi = pred_order[np.searchsorted(pred_label_sorted, cid):
                        np.searchsorted(pred_label_sorted, cid, "right")]   # score order
        num_gt[j], num_pred[j] = len(ev), len(pi)
        if len(pi) == 0:
            continue
        m = _match_class(pred_code[pi], pred_segments[pi], event_code[ev], event_segments[ev], thr)
        precision, rec = precision_recall(m.matched_event >= 0, len(ev))
        ap[:, j] = interpolated_ap(precision, rec)
        recall[:, j] = _class_recall(pred_code[pi], event_code[ev], m, thr, RECALL_TOP_K)
        matched_event[:, pi] = np.where(m.matched_event >= 0, ev[m.matched_event], -1)
        rank_in_class[pi] = np.arange(len(pi))
    missing = class_ids[num_pred == 0]
    if len(missing) and verbose:
        logger.warning("%s: %d class(es) with ground truth have no predictions (AP 0): %s",
                       where, len(missing), ", ".join(str(c) for c in missing))
    ignored = int(len(preds) - num_pred.sum())
    if ignored and verbose:
        logger.info("%s: %d predictions of classes without ground truth ignored", where, ignored)
    map_per_tiou = ap.mean(axis=1)
    matches = PredictionMatches(tiou_thresholds=thr, matched_event=matched_event,
                                rank_in_class=rank_in_class)
    return MetricResult(tiou_thresholds=thr, class_ids=class_ids, ap=ap, map_per_tiou=map_per_tiou,
                        average_map=float(map_per_tiou.mean()), num_gt_per_class=num_gt,
                        num_pred_per_class=num_pred, recall=recall, ignored_predictions=ignored,
                        matches=matches)
