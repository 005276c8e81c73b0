"""Per-video timeline figure: ground-truth events by class on top, the top-scoring predictions
below (one lane each, best first), shaded by score and coloured by outcome at a tIoU threshold
(true positive, or the false-positive type of ``errors.py``). Seconds on the x axis.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from libs.evaluation.metrics import evaluate_map
from libs.evaluation.events import GroundTruth, Predictions, as_numpy
from libs.evaluation.report.errors import (ERROR_TYPES, NOT_COUNTED, TRUE_POSITIVE,
                                           classify_outcomes)
from libs.evaluation.report.figures import (ERROR_COLOURS, ERROR_LABELS, NOT_COUNTED_COLOUR,
                                            TP_COLOUR, new_figure)


def default_max_predictions(num_events: int) -> int:
    """Predictions drawn for a video with ``num_events`` events: 3 per event, 10 to 30."""
    return int(min(30, max(10, 3 * num_events)))


def video_outcomes(video: Any, detections: Mapping[str, Any], tiou: float = 0.5) -> np.ndarray:
    """Outcome codes (N,) of one video's predictions at ``tiou``, scored against that video
    alone: the metric's matching, then the error types of ``errors.py``. A prediction of a
    class the video has no event of is a false positive here (in a split it would be one too,
    unless no video of the split has that class)."""
    segs = as_numpy(detections["segments"]).astype(np.float64).reshape(-1, 2)
    preds = Predictions(np.full(len(segs), str(video.video_id)), segs[:, 0], segs[:, 1],
                        as_numpy(detections["labels"]).astype(np.int64).reshape(-1),
                        as_numpy(detections["scores"]).astype(np.float64).reshape(-1))
    ev = np.asarray(video.segments, dtype=np.float64).reshape(-1, 2)
    gt = GroundTruth(np.full(len(ev), str(video.video_id)), ev[:, 0], ev[:, 1],
                     np.asarray(video.labels, dtype=np.int64).reshape(-1))
    is_fp = np.ones(len(preds), dtype=bool)
    if len(gt):
        m = evaluate_map(gt, preds, (tiou,), where=f"video '{video.video_id}'",
                         verbose=False).matches
        is_fp = m.matched_event[0] < 0
    return classify_outcomes(gt, preds, is_fp, tiou)


def timeline_figure(video: Any, detections: Mapping[str, Any], label_names: Mapping[int, str],
                    *, tiou: float = 0.5, outcomes: Optional[np.ndarray] = None,
                    max_predictions: Optional[int] = None, title: Optional[str] = None,
                    width_in: float = 10.0) -> Figure:
    """Timeline of one video.

    ``video``: a ``VideoRecord`` (``video_id``, ``duration`` s, ``segments`` (G, 2) s,
    ``labels`` (G,)); ``detections``: ``segments`` (N, 2) s, ``scores`` (N,), ``labels`` (N,)
    (numpy or torch). ``outcomes`` (N,): codes from the report's split-wide analysis; if None
    they are computed for this video alone (:func:`video_outcomes`). The ``max_predictions``
    top-scoring predictions are drawn (default :func:`default_max_predictions`); a bar's
    opacity is 0.2 + 0.8 x its score relative to the video's top score (printed next to its
    class name).
    """
    segs = as_numpy(detections["segments"]).astype(np.float64).reshape(-1, 2)
    scores = as_numpy(detections["scores"]).astype(np.float64).reshape(-1)
    labels = as_numpy(detections["labels"]).astype(np.int64).reshape(-1)
    if outcomes is None:
        outcomes = video_outcomes(video, detections, tiou)
    ev = np.asarray(video.segments, dtype=np.float64).reshape(-1, 2)
    ev_labels = np.asarray(video.labels, dtype=np.int64).reshape(-1)
    k = default_max_predictions(len(ev)) if max_predictions is None else int(max_predictions)
    shown = np.argsort(-scores, kind="stable")[:k]
    name = lambda c: str(label_names.get(int(c), int(c)))  # noqa: E731
    gt_classes = sorted(set(ev_labels.tolist()))
    n_gt_lanes, n_pred_lanes = max(len(gt_classes), 1), max(len(shown), 1)
    fig = new_figure(width_in, 1.5 + 0.2 * (n_gt_lanes + n_pred_lanes))
    ax_gt, ax_pr = fig.subplots(2, 1, sharex=True,
                                gridspec_kw={"height_ratios": [n_gt_lanes + 0.6,
                                                               n_pred_lanes + 0.6]})
    lane_of = {c: i for i, c in enumerate(gt_classes)}
    for (s, e), c in zip(ev, ev_labels):
        ax_gt.barh(lane_of[int(c)], e - s, left=s, height=0.7, color="#333333")
    ax_gt.set_yticks(range(len(gt_classes)), [name(c) for c in gt_classes], fontsize=7)
    ax_gt.set_ylim(n_gt_lanes - 0.4, -0.6)
    ax_gt.set_ylabel("ground truth", fontsize=8)
    if not gt_classes:
        ax_gt.text(0.5, 0.5, "no ground-truth events", transform=ax_gt.transAxes, ha="center",
                   va="center", fontsize=8)
    colour = {TRUE_POSITIVE: TP_COLOUR, NOT_COUNTED: NOT_COUNTED_COLOUR,
              **{i: ERROR_COLOURS[e] for i, e in enumerate(ERROR_TYPES)}}
    top_score = float(scores[shown].max(initial=0.0))
    relative = scores[shown] / top_score if top_score > 0 else np.zeros(len(shown))
    shades = 0.2 + 0.8 * np.clip(relative, 0.0, 1.0)
    for lane, (i, shade) in enumerate(zip(shown, shades)):
        ax_pr.barh(lane, segs[i, 1] - segs[i, 0], left=segs[i, 0], height=0.7,
                   color=colour[int(outcomes[i])], alpha=float(shade),
                   edgecolor=colour[int(outcomes[i])], linewidth=0.8)
    ax_pr.set_yticks(range(len(shown)), [f"{name(labels[i])} {scores[i]:.2f}" for i in shown],
                     fontsize=6)
    ax_pr.set_ylim(n_pred_lanes - 0.4, -0.6)
    ax_pr.set_ylabel(f"top {len(shown)} of {len(scores)}", fontsize=8)
    ax_pr.set_xlabel("time (s)", fontsize=8)
    ax_pr.set_xlim(0, max(float(video.duration), float(segs[:, 1].max(initial=0.0))))
    present = sorted(set(int(outcomes[i]) for i in shown))
    legend_name = {TRUE_POSITIVE: "true positive", NOT_COUNTED: "class without GT",
                   **{i: ERROR_LABELS[e] for i, e in enumerate(ERROR_TYPES)}}
    fig.legend(handles=[Patch(color=colour[o], label=legend_name[o]) for o in present],
               fontsize=7, loc="lower center", ncol=max(len(present), 1), frameon=False)
    for ax in (ax_gt, ax_pr):
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    ax_gt.set_title(title or f"{video.video_id} ({float(video.duration):.1f} s, {len(ev)} events)"
                    f", outcomes at tIoU {tiou:.2f}", fontsize=9)
    fig.tight_layout(rect=(0, 0.25 / fig.get_figheight(), 1, 1))
    return fig
