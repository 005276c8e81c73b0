"""ActivityNet-style temporal detection mAP (SPEC s.6, numerics s.5, seed s.6.2).

Algorithm, per class ``c`` present in the ground truth and per tIoU threshold ``thr``:

1. Predictions of class ``c`` (over all videos) are ordered by score, descending, with a *stable*
   sort: tied scores keep their input order. (The reference uses numpy's reversed quicksort,
   whose tie order is implementation defined; only ties can differ.)
2. Each prediction walks the GT of class ``c`` in its own video, ordered by tIoU descending
   (stable: ties keep GT input order). At each threshold independently: a GT with
   ``tiou < thr`` ends the walk as a false positive; a GT already locked at ``thr`` is skipped;
   otherwise the GT becomes a true positive and is locked at ``thr``. A walk that ends without a
   match, or a video without GT of ``c``, gives a false positive.
3. ``rec = cumTP / #GT``, ``prec = cumTP / (cumTP + cumFP)`` along the sorted order (ties are
   not merged), and AP is the VOC-2011 all-point interpolation: prepend (0, 0), append (1, 0),
   make precision non-increasing from the right, sum ``d_rec * prec`` where recall changes.

``mAP_thr`` is the mean AP over the GT classes (a class with GT and no predictions counts 0);
the headline *average mAP* is the mean of ``mAP_thr`` over the thresholds. Duplicate GT events
are kept. Unlike the reference, a prediction whose class has no GT is ignored: it is never
remapped onto another class (seed s.10 bug 7). tIoU = inter / (len_p + len_g - inter) on
seconds in float64; a zero union gives tIoU 0 (the reference would produce NaN).

Top-k recall (k = 1, 5) follows the reference: per class and GT video, the first ``k * n_gt``
predictions by score; a GT is hit if any of them has ``tIoU >= thr`` (no one-to-one matching).

The greedy matching is vectorised over thresholds, GT and videos: round ``r`` handles, at once for
every video, the ``r``-th prediction of that video that can match anything, so the Python loop
runs ``max(candidates per video and class)`` times.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from libs.common.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_TIOU_THRESHOLDS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
RECALL_TOP_K: Tuple[int, ...] = (1, 5)


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


def _pairs(p_vid: np.ndarray, g_vid_sorted: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """All (prediction, GT) pairs of the same video. ``g_vid_sorted`` must be sorted.
    Returns (pred index, index into the sorted GT), grouped by prediction, GT ascending."""
    lo = np.searchsorted(g_vid_sorted, p_vid, side="left")
    hi = np.searchsorted(g_vid_sorted, p_vid, side="right")
    cnt = hi - lo
    pidx = np.repeat(np.arange(len(p_vid)), cnt)
    offs = np.arange(len(pidx)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return pidx, np.repeat(lo, cnt) + offs


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


def _class_tp(p_vid: np.ndarray, p_seg: np.ndarray, g_vid: np.ndarray, g_seg: np.ndarray,
              thr: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching of one class. Predictions must already be in score order.

    Returns tp (n_thr, P) bool, and the pairs (pred idx, gt idx, tiou) for the recall.
    """
    n_thr, n_pred = len(thr), len(p_vid)
    tp = np.zeros((n_thr, n_pred), dtype=bool)
    g_order = np.argsort(g_vid, kind="stable")        # GT grouped by video, input order kept
    g_vid, g_seg = g_vid[g_order], g_seg[g_order]
    pidx, gidx = _pairs(p_vid, g_vid)
    iou = segment_tiou(p_seg[pidx], g_seg[gidx])
    # Pairs below the lowest threshold end the walk as FP at every threshold: drop them.
    keep = iou >= thr.min()
    kp, kg, ki = pidx[keep], gidx[keep], iou[keep]
    if len(kp):
        cand = np.unique(kp)                            # candidates, in score order
        rank_of = np.zeros(n_pred, dtype=np.int64)
        rank_of[cand] = _rank_in_group(p_vid[cand])
        rnd = rank_of[kp]
        order = np.lexsort((-ki, kp, rnd))              # round, prediction, tIoU desc (stable)
        kp, kg, ki, rnd = kp[order], kg[order], ki[order], rnd[order]
        bounds = np.r_[0, np.nonzero(np.diff(rnd))[0] + 1, len(rnd)]
        locked = np.zeros((len(g_vid), n_thr), dtype=bool)
        big = np.iinfo(np.int64).max
        for b0, b1 in zip(bounds[:-1], bounds[1:]):     # one round: <= 1 prediction per video
            rp, rg, ri = kp[b0:b1], kg[b0:b1], ki[b0:b1]
            ok = (ri[:, None] >= thr[None, :]) & ~locked[rg]            # (n_pairs, n_thr)
            seg_start = np.r_[0, np.nonzero(np.diff(rp))[0] + 1]
            pos = np.where(ok, np.arange(len(rp))[:, None], big)
            first = np.minimum.reduceat(pos, seg_start, axis=0)         # (n_cand, n_thr)
            ci, ti = np.nonzero(first != big)
            sel = first[ci, ti]
            locked[rg[sel], ti] = True
            tp[ti, rp[sel]] = True
    return tp, pidx, gidx, iou


def _class_recall(p_vid: np.ndarray, g_vid: np.ndarray, pidx: np.ndarray, gidx: np.ndarray,
                  iou: np.ndarray, thr: np.ndarray, top_k: Sequence[int]) -> np.ndarray:
    """Top-k x recall of one class (predictions in score order) -> (n_thr, n_k)."""
    g_sorted = np.sort(g_vid, kind="stable")
    n_gt_video = (np.searchsorted(g_sorted, p_vid, side="right")
                  - np.searchsorted(g_sorted, p_vid, side="left"))      # per prediction
    rank = _rank_in_group(p_vid)
    out = np.zeros((len(thr), len(top_k)))
    for kidx, k in enumerate(top_k):
        ok = rank[pidx] < k * n_gt_video[pidx]
        best = np.full(len(g_vid), -1.0)
        np.maximum.at(best, gidx[ok], iou[ok])
        out[:, kidx] = (best[None, :] >= thr[:, None]).sum(axis=1) / len(g_vid)
    return out


def evaluate_map(gt: GroundTruth, preds: Predictions,
                 tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS, *,
                 where: str = "evaluated split") -> MetricResult:
    """ActivityNet mAP of ``preds`` against ``gt`` (see the module docstring).

    Raises :class:`UserError` when ``gt`` has no events (e.g. the test split); ``where`` names
    the split or file in that message.
    """
    thr = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if len(thr) == 0 or not np.all((thr > 0) & (thr <= 1)):
        raise UserError(f"bad tIoU thresholds ({list(tiou_thresholds)}): expected values in (0, 1]")
    if len(gt) == 0:
        raise UserError(f"no ground-truth events ({where}): the split has no ground truth to score "
                        "against; use --saveonly to write the predictions without the metric")
    if len(preds) and not np.all(np.isfinite(preds.scores)):
        raise UserError(f"non-finite prediction scores ({where}): expected finite numbers")
    # Integer video codes shared by GT and predictions.
    _, codes = np.unique(np.concatenate([gt.video_ids, preds.video_ids]), return_inverse=True)
    g_code, p_code = codes[:len(gt)], codes[len(gt):]
    class_ids = np.unique(gt.labels)
    ap = np.zeros((len(thr), len(class_ids)))
    recall = np.zeros((len(thr), len(class_ids), len(RECALL_TOP_K)))
    num_gt = np.zeros(len(class_ids), dtype=np.int64)
    num_pred = np.zeros(len(class_ids), dtype=np.int64)
    g_seg = np.stack([gt.t_start, gt.t_end], axis=1)
    p_seg = np.stack([preds.t_start, preds.t_end], axis=1)
    # Predictions grouped by class, then by score descending; stable, so ties keep input order.
    p_order = np.lexsort((-preds.scores, preds.labels))
    p_lab_sorted = preds.labels[p_order]
    g_by_class = np.argsort(gt.labels, kind="stable")
    g_lab_sorted = gt.labels[g_by_class]
    for j, cid in enumerate(class_ids):
        gi = g_by_class[np.searchsorted(g_lab_sorted, cid):np.searchsorted(g_lab_sorted, cid, "right")]
        pi = p_order[np.searchsorted(p_lab_sorted, cid):np.searchsorted(p_lab_sorted, cid, "right")]
        num_gt[j], num_pred[j] = len(gi), len(pi)
        if len(pi) == 0:
            continue
        tp, pidx, gidx, iou = _class_tp(p_code[pi], p_seg[pi], g_code[gi], g_seg[gi], thr)
        tp_cum = np.cumsum(tp, axis=1).astype(np.float64)
        fp_cum = np.cumsum(~tp, axis=1).astype(np.float64)
        ap[:, j] = interpolated_ap(tp_cum / (tp_cum + fp_cum), tp_cum / len(gi))
        g_vid_sorted = np.sort(g_code[gi], kind="stable")
        recall[:, j] = _class_recall(p_code[pi], g_vid_sorted, pidx, gidx, iou, thr, RECALL_TOP_K)
    missing = class_ids[num_pred == 0]
    if len(missing):
        logger.warning("%d class(es) with ground truth have no predictions (AP 0): %s",
                       len(missing), ", ".join(str(c) for c in missing))
    ignored = int(len(preds) - num_pred.sum())
    if ignored:
        logger.info("%d predictions of classes without ground truth ignored", ignored)
    map_per_tiou = ap.mean(axis=1)
    return MetricResult(tiou_thresholds=thr, class_ids=class_ids, ap=ap, map_per_tiou=map_per_tiou,
                        average_map=float(map_per_tiou.mean()), num_gt_per_class=num_gt,
                        num_pred_per_class=num_pred, recall=recall, ignored_predictions=ignored)
