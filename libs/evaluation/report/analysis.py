"""The numbers of the evaluation report (docs/report.md): mAP per threshold and class, PR curves,
per-video AP, false negatives and the sensitivity of AP to event length and events per video.

Everything is computed through :func:`libs.evaluation.metrics.evaluate_map`; nothing here
matches predictions to events again. All values are fractions in [0, 1], times in seconds.

Bins (adapted from DETAD's ActivityNet bins to the Perception Test's short events; see
docs/report.md for the reasoning):

* event length, seconds: XS (0, 0.5], S (0.5, 1], M (1, 2], L (2, 4], XL (4, inf)
* events per video (of the task): XS 1-2, S 3-5, M 6-10, L 11-20, XL 21+
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from libs.evaluation.metrics import (DEFAULT_TIOU_THRESHOLDS, MetricResult, evaluate_map,
                                     pr_envelope, precision_recall)
from libs.evaluation.events import GroundTruth, Predictions
from libs.evaluation.report.errors import select_predictions

logger = logging.getLogger(__name__)

BIN_NAMES = ("XS", "S", "M", "L", "XL")
LENGTH_BINS_S = (0.0, 0.5, 1.0, 2.0, 4.0, np.inf)        # (lo, hi] seconds
EVENTS_PER_VIDEO_BINS = (1, 3, 6, 11, 21, np.inf)        # [lo, hi) events
FINE_TIOU = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))


def tkey(t: float) -> str:
    """Threshold key of the JSON outputs, ``"0.50"``."""
    return f"{t:.2f}"


def evaluation_thresholds(pr_tiou: float, error_tiou: float) -> np.ndarray:
    """Sorted union of the challenge thresholds, the fine 0.05:0.95 grid, ``pr_tiou`` and
    ``error_tiou`` (the metric evaluates thresholds independently, so one call serves all)."""
    return np.unique(np.round(np.concatenate([DEFAULT_TIOU_THRESHOLDS, FINE_TIOU,
                                              [pr_tiou, error_tiou]]), 6))


def headline(result: MetricResult) -> Dict[str, Any]:
    """Average mAP and mAP per threshold over the challenge thresholds of ``result``."""
    idx = [result.matches.threshold_index(t) for t in DEFAULT_TIOU_THRESHOLDS]
    return {"average_map": float(result.map_per_tiou[idx].mean()),
            "tiou_thresholds": [float(t) for t in DEFAULT_TIOU_THRESHOLDS],
            "map_per_tiou": {tkey(t): float(result.map_per_tiou[i])
                             for t, i in zip(DEFAULT_TIOU_THRESHOLDS, idx)}}


def per_class(result: MetricResult, label_names: Mapping[int, str], pr_tiou: float
              ) -> Dict[str, Dict[str, Any]]:
    """Per GT class: name, event and prediction counts, average AP (challenge thresholds) and
    the AP at ``pr_tiou``, keyed by the class id as a string."""
    idx = [result.matches.threshold_index(t) for t in DEFAULT_TIOU_THRESHOLDS]
    p = result.matches.threshold_index(pr_tiou)
    return {str(int(c)): {"name": label_names.get(int(c), str(int(c))),
                          "num_events": int(result.num_gt_per_class[j]),
                          "num_predictions": int(result.num_pred_per_class[j]),
                          "average_ap": float(result.ap[idx, j].mean()),
                          "ap_at_pr_tiou": float(result.ap[p, j])}
            for j, c in enumerate(result.class_ids)}


def pr_curves(preds: Predictions, result: MetricResult, pr_tiou: float
              ) -> Dict[str, Dict[str, List[float]]]:
    """Interpolated precision-recall curve of each GT class at ``pr_tiou`` (the curve the AP
    integrates): ``{class id: {"recall": [...], "precision": [...]}}``."""
    m = result.matches
    t = m.threshold_index(pr_tiou)
    out = {}
    for j, c in enumerate(result.class_ids):
        mine = np.nonzero((preds.labels == c) & m.counted)[0]
        mine = mine[np.argsort(m.rank_in_class[mine])]               # the metric's score order
        if len(mine):
            prec, rec = precision_recall(m.is_tp[t:t + 1, mine], int(result.num_gt_per_class[j]))
            r, p = pr_envelope(prec[0], rec[0])
        else:
            r, p = np.zeros(0), np.zeros(0)
        out[str(int(c))] = {"recall": [float(x) for x in r], "precision": [float(x) for x in p]}
    return out


def per_video_ap(gt: GroundTruth, preds: Predictions) -> Dict[str, float]:
    """Average AP (challenge thresholds) of each video with events: the mean over the video's
    classes of the AP of its own predictions of that class (other classes' predictions do not
    count, as the metric ignores classes without events). One metric call: (video, class)
    pairs are evaluated as classes, which matching never mixes anyway."""
    if not len(gt):
        return {}
    vids, codes = np.unique(np.concatenate([gt.video_ids, preds.video_ids]), return_inverse=True)
    n_cls = int(max(gt.labels.max(initial=0), preds.labels.max(initial=0))) + 1
    pair_gt = GroundTruth(gt.video_ids, gt.t_start, gt.t_end, codes[:len(gt)] * n_cls + gt.labels)
    pair_pred = Predictions(preds.video_ids, preds.t_start, preds.t_end,
                            codes[len(gt):] * n_cls + preds.labels, preds.scores)
    r = evaluate_map(pair_gt, pair_pred, DEFAULT_TIOU_THRESHOLDS, where="per-video AP",
                     verbose=False)
    video_of_class = r.class_ids // n_cls
    ap = r.ap.mean(axis=0)
    sums = np.bincount(video_of_class, weights=ap, minlength=len(vids))
    counts = np.bincount(video_of_class, minlength=len(vids))
    return {str(vids[v]): float(sums[v] / counts[v]) for v in np.nonzero(counts)[0]}


def _bin_of(values: np.ndarray, edges: Sequence[float], right: bool) -> np.ndarray:
    """Bin index of each value: (lo, hi] with ``right``, else [lo, hi); -1 outside."""
    e = np.asarray(edges, dtype=np.float64)
    b = np.searchsorted(e, values, side="left" if right else "right") - 1
    return np.where((b >= 0) & (b < len(e) - 1), b, -1)


def _bin_ranges(edges: Sequence[float]) -> List[List[Optional[float]]]:
    return [[float(lo), None if np.isinf(hi) else float(hi)]
            for lo, hi in zip(edges[:-1], edges[1:])]


def sensitivity(gt: GroundTruth, preds: Predictions, result: MetricResult, fn_tiou: float
                ) -> Dict[str, Any]:
    """AP and false negatives per bin of event length and of events per video.

    Length bin ``b``, at each challenge threshold ``t``: the metric on the events of ``b``
    against the predictions matched at ``t`` to an event of ``b`` plus the false positives at
    ``t`` whose own length is in ``b`` (predictions matched to events of other bins are left
    out), averaged over ``t``. Events-per-video bin: the metric on the videos of the bin.
    False-negative rate: the fraction of the bin's events no prediction matched at ``fn_tiou``.
    """
    m = result.matches
    fn = m.threshold_index(fn_tiou)
    hit = np.zeros(len(gt), dtype=bool)
    hit[m.matched_event[fn][m.matched_event[fn] >= 0]] = True
    ev_bin = _bin_of(gt.t_end - gt.t_start, LENGTH_BINS_S, right=True)
    pred_bin = _bin_of(preds.t_end - preds.t_start, LENGTH_BINS_S, right=True)
    length = []
    for b, name in enumerate(BIN_NAMES):
        mine = ev_bin == b
        entry = {"name": name, "range_s": _bin_ranges(LENGTH_BINS_S)[b],
                 "num_events": int(mine.sum()), "average_map": None,
                 "false_negative_rate": None}
        if mine.any():
            sub_gt = GroundTruth(gt.video_ids[mine], gt.t_start[mine], gt.t_end[mine],
                                 gt.labels[mine])
            maps = []
            for t in DEFAULT_TIOU_THRESHOLDS:
                me = m.matched_event[m.threshold_index(t)]
                keep = m.counted & np.where(me >= 0, ev_bin[np.maximum(me, 0)] == b, pred_bin == b)
                maps.append(evaluate_map(sub_gt, select_predictions(preds, keep), (t,),
                                         where=f"length bin {name}", verbose=False).map_per_tiou[0])
            entry["average_map"] = float(np.mean(maps))
            entry["false_negative_rate"] = float(1.0 - hit[mine].mean())
        length.append(entry)
    vids, v_code = np.unique(gt.video_ids, return_inverse=True)
    n_per_video = np.bincount(v_code)
    video_bin = _bin_of(n_per_video.astype(np.float64), EVENTS_PER_VIDEO_BINS, right=False)
    per_video = []
    for b, name in enumerate(BIN_NAMES):
        in_bin = vids[video_bin == b]
        ev = np.isin(gt.video_ids, in_bin)
        lo, hi = _bin_ranges(EVENTS_PER_VIDEO_BINS)[b]
        entry = {"name": name, "range_events": [int(lo), None if hi is None else int(hi) - 1],
                 "num_videos": int(len(in_bin)), "num_events": int(ev.sum()),
                 "average_map": None, "false_negative_rate": None}
        if ev.any():
            sub_gt = GroundTruth(gt.video_ids[ev], gt.t_start[ev], gt.t_end[ev], gt.labels[ev])
            keep = np.isin(preds.video_ids, in_bin)
            r = evaluate_map(sub_gt, select_predictions(preds, keep), DEFAULT_TIOU_THRESHOLDS,
                             where=f"events-per-video bin {name}", verbose=False)
            entry["average_map"] = float(r.average_map)
            entry["false_negative_rate"] = float(1.0 - hit[ev].mean())
        per_video.append(entry)
    return {"fn_tiou": float(fn_tiou),
            "false_negatives": {"num_events": int(len(gt)), "missed": int((~hit).sum()),
                                "rate": float((~hit).mean()) if len(gt) else 0.0},
            "length": {"edges_s": [None if np.isinf(e) else float(e) for e in LENGTH_BINS_S],
                       "bins": length},
            "events_per_video": {"edges": [None if np.isinf(e) else int(e)
                                           for e in EVENTS_PER_VIDEO_BINS], "bins": per_video}}


def choose_videos(video_ids: Sequence[str], video_ap: Mapping[str, float],
                  chosen: Optional[Sequence[str]], num_videos: int, seed: int = 0
                  ) -> List[Dict[str, Any]]:
    """Videos for the timelines: ``chosen`` (in that order), else the ``num_videos`` with the
    lowest per-video AP (ties: split order) then ``num_videos`` sampled from the rest with
    ``seed``. Returns ``[{"video_id", "reason"}]``."""
    if chosen:
        return [{"video_id": str(v), "reason": "chosen"} for v in chosen]
    order = {v: i for i, v in enumerate(video_ids)}
    scored = sorted((v for v in video_ids if v in video_ap), key=lambda v: (video_ap[v], order[v]))
    worst = scored[:num_videos]
    rest = [v for v in video_ids if v not in set(worst)]
    rng = np.random.default_rng(seed)
    sampled = [rest[i] for i in sorted(rng.choice(len(rest), min(num_videos, len(rest)),
                                                  replace=False))] if rest else []
    return ([{"video_id": v, "reason": "lowest AP"} for v in worst]
            + [{"video_id": v, "reason": "sampled"} for v in sampled])
