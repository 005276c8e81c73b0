"""Evaluation report: mAP table, timelines, PR curves, per-class AP and a DETAD error analysis,
written as PNG figures, ``report.json`` and one ``index.html`` (how to read it: docs/report.md).

    write_report(out_dir, videos, detections, label_names, task)   -> the report.json dict
    build_report(videos, detections, label_names, task)            -> the same, writing nothing
    summary_figures(report)                                         -> {name: matplotlib Figure}
    compare_reports(report_a, report_b, out_dir)                    -> the compare.json dict
    timeline_figure(video, detections, label_names)                 -> matplotlib Figure
    figure_to_array(fig)                                            -> (H, W, 3) uint8

Layout of a report folder: ``index.html``, ``report.json``, ``img/*.png``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from libs.common.errors import UserError, format_problems
from libs.common.io import atomic_write_text
from libs.evaluation.metrics import evaluate_map
from libs.evaluation.events import (GroundTruth, Predictions, ground_truth_from_records,
                                    predictions_from_detections)
from libs.evaluation.report import figures as F
from libs.evaluation.report.analysis import (FINE_TIOU, choose_videos, evaluation_thresholds,
                                             headline, per_class, per_video_ap, pr_curves,
                                             sensitivity, tkey)
from libs.evaluation.report.compare import compare_reports, load_report
from libs.evaluation.report.errors import (ERROR_TYPES, TRUE_POSITIVE, analyse_errors,
                                           outcomes_from_matches, select_predictions)
from libs.evaluation.report.figures import figure_to_array, summary_figures
from libs.evaluation.report.html import write_index
from libs.evaluation.report.output import IMG, prepare_report_dir, safe_name
from libs.evaluation.report.timeline import timeline_figure, video_outcomes

__all__ = ["write_report", "build_report", "compare_reports", "load_report", "timeline_figure",
           "video_outcomes", "figure_to_array", "summary_figures", "prepare_report_dir",
           "REPORT_FORMAT", "ERROR_TYPES"]

logger = logging.getLogger(__name__)

REPORT_FORMAT = "perception-report/1"
Detections = Union[Sequence[Mapping[str, Any]], Predictions]


def _check_predictions(preds: Predictions, split_ids: Sequence[str]) -> Predictions:
    """Drop (with a warning) predictions of videos outside the split, as the scorer does; bad
    values are one :class:`UserError` naming the videos."""
    bad = ~(np.isfinite(preds.t_start) & np.isfinite(preds.t_end) & np.isfinite(preds.scores)
            & (preds.t_end >= preds.t_start))
    if bad.any():
        vids = sorted(set(preds.video_ids[bad].tolist()))
        raise UserError(format_problems(
            [f"video '{v}'" for v in vids], f"bad detections ({int(bad.sum())} with non-finite "
            "values or end < start; expected finite [start, end] seconds and scores)"))
    outside = ~np.isin(preds.video_ids, np.asarray(list(split_ids), dtype=str))
    if outside.any():
        logger.warning("%d predictions of %d video(s) outside the evaluated videos ignored",
                       int(outside.sum()), len(set(preds.video_ids[outside].tolist())))
        preds = select_predictions(preds, ~outside)
    return preds


@dataclass
class _Analysis:
    report: Dict[str, Any]           # the report.json dict (without "timelines")
    gt: GroundTruth
    preds: Predictions
    outcomes: np.ndarray             # (N,) outcome codes at error_tiou, every prediction
    video_ap: Dict[str, float]


def _check_options(pr_tiou: float, fp_window: float, error_tiou: float) -> None:
    if not (0 < pr_tiou <= 1 and 0 < error_tiou <= 1):
        raise UserError(f"bad tIoU (--pr-tiou {pr_tiou}): expected a value in (0, 1]")
    if not fp_window > 0:
        raise UserError(f"bad false-positive window (--fp-window {fp_window}): expected > 0")


def _analyse(videos: Sequence[Any], detections: Detections, label_names: Mapping[int, str],
             task: str, pr_tiou: float, fp_window: float, error_tiou: float,
             meta: Optional[Mapping[str, Any]]) -> _Analysis:
    _check_options(pr_tiou, fp_window, error_tiou)
    split_ids = [str(v.video_id) for v in videos]
    gt = ground_truth_from_records(videos)
    if len(gt) == 0:
        raise UserError(f"no ground-truth events of '{task}' in the {len(split_ids)} evaluated "
                        "videos: a report needs ground truth")
    preds = (detections if isinstance(detections, Predictions)
             else predictions_from_detections(detections))
    preds = _check_predictions(preds, split_ids)
    result = evaluate_map(gt, preds, evaluation_thresholds(pr_tiou, error_tiou), where=task)
    errors = analyse_errors(gt, preds, result, tiou=error_tiou, fp_window=fp_window)
    video_ap = per_video_ap(gt, preds)
    report: Dict[str, Any] = {
        "format": REPORT_FORMAT, "task": task, "meta": dict(meta or {}),
        "num_videos": len(split_ids), "num_events": len(gt), "num_predictions": len(preds),
        "ignored_predictions": int(result.ignored_predictions), **headline(result),
        "map_vs_tiou": {tkey(t): float(result.map_per_tiou[result.matches.threshold_index(t)])
                        for t in FINE_TIOU},
        "per_class_ap": per_class(result, label_names, pr_tiou), "pr_tiou": float(pr_tiou),
        "pr_curves": pr_curves(preds, result, pr_tiou),
        "errors": dict(errors.counts), "error_map_gain": dict(errors.map_gain),
        "error_analysis": errors.to_dict(),
        "sensitivity": sensitivity(gt, preds, result, error_tiou),
        "video_ap": dict(sorted(video_ap.items(), key=lambda kv: kv[1])),
    }
    return _Analysis(report, gt, preds, outcomes_from_matches(gt, preds, result, error_tiou),
                     video_ap)


def build_report(videos: Sequence[Any], detections: Detections, label_names: Mapping[int, str],
                 task: str, *, pr_tiou: float = 0.5, fp_window: float = 10,
                 error_tiou: float = 0.5, meta: Optional[Mapping[str, Any]] = None
                 ) -> Dict[str, Any]:
    """The report.json dict (without timelines) of ``detections`` on ``videos``, writing
    nothing: e.g. for ``figures.summary_figures`` in TensorBoard. Arguments: :func:`write_report`.
    """
    return _analyse(videos, detections, label_names, task, pr_tiou, fp_window, error_tiou,
                    meta).report


def write_report(out_dir: str, videos: Sequence[Any], detections: Detections,
                 label_names: Mapping[int, str], task: str, *,
                 videos_to_show: Optional[Sequence[str]] = None, num_videos: int = 4,
                 pr_tiou: float = 0.5, fp_window: float = 10, error_tiou: float = 0.5,
                 overwrite: bool = False, meta: Optional[Mapping[str, Any]] = None,
                 seed: int = 0) -> Dict[str, Any]:
    """Write the evaluation report of ``detections`` on ``videos`` to ``out_dir``.

    ``videos``: ``VideoRecord``s of the evaluated split (``segments`` (G, 2) seconds,
    ``labels`` (G,)); ``detections``: per-video dicts ``video_id``, ``segments`` (N, 2) seconds,
    ``scores`` (N,), ``labels`` (N,) (numpy or torch), or :class:`Predictions`; predictions of
    videos not in ``videos`` are ignored with a warning. ``label_names``: class id -> name.
    Timelines: ``videos_to_show``, else the ``num_videos`` videos with the lowest AP and
    ``num_videos`` sampled with ``seed``. ``pr_tiou``: threshold of the PR curves;
    ``error_tiou``: of the error breakdown, the timelines' outcomes and the false negatives;
    ``fp_window``: the error analysis covers each class's top ``fp_window * G_c`` predictions.
    ``meta``: extra facts shown on the page (e.g. split, prediction file). An existing report
    in ``out_dir`` is replaced only with ``overwrite``. Returns the report.json dict.
    """
    t0 = time.perf_counter()
    _check_options(pr_tiou, fp_window, error_tiou)
    if num_videos < 0:
        raise UserError(f"bad number of videos (--num-videos {num_videos}): expected >= 0")
    by_id = {str(v.video_id): v for v in videos}
    unknown = [v for v in (videos_to_show or []) if str(v) not in by_id]
    if unknown:
        raise UserError(f"unknown video id(s) {', '.join(map(str, unknown[:10]))} (--videos): "
                        f"expected ids of the {len(by_id)} evaluated videos")
    a = _analyse(videos, detections, label_names, task, pr_tiou, fp_window, error_tiou, meta)
    report, preds = a.report, a.preds
    out = prepare_report_dir(out_dir, overwrite)
    html_figs = []
    for name, fig in F.summary_figures(report).items():
        F.save_png(fig, str(out / IMG / f"{name}.png"))
        title, caption = F.SUMMARY_CAPTIONS[name]
        html_figs.append((title, f"{IMG}/{name}.png", caption.format(**report["error_analysis"],
                                                                     pr_tiou=pr_tiou)))
    order = np.argsort(preds.video_ids, kind="stable")
    sorted_ids = preds.video_ids[order]
    timelines, html_timelines = [], []
    picks = choose_videos(list(by_id), a.video_ap, videos_to_show, num_videos, seed)
    for i, pick in enumerate(picks):
        vid, video = pick["video_id"], by_id[pick["video_id"]]
        rows = order[np.searchsorted(sorted_ids, vid, "left"):
                     np.searchsorted(sorted_ids, vid, "right")]
        det = {"segments": np.stack([preds.t_start[rows], preds.t_end[rows]], axis=1),
               "scores": preds.scores[rows], "labels": preds.labels[rows]}
        ap = a.video_ap.get(vid)
        ap_text = "no events" if ap is None else f"AP {ap * 100:.1f} %"
        fig = timeline_figure(video, det, label_names, tiou=error_tiou, outcomes=a.outcomes[rows],
                              title=f"{vid} ({pick['reason']}, {ap_text}, {video.duration:.1f} s)")
        name = f"{IMG}/timeline_{i:02d}_{safe_name(vid)}.png"
        F.save_png(fig, str(out / name))
        tp = int((a.outcomes[rows] == TRUE_POSITIVE).sum())
        timelines.append({**pick, "video_ap": ap, "num_events": int(video.num_events),
                          "num_predictions": int(len(rows)), "true_positives": tp,
                          "image": name})
        html_timelines.append((f"{vid}: {pick['reason']}", name,
                               f"{ap_text}; {video.num_events} events, {len(rows)} "
                               f"predictions, {tp} true positives at tIoU {error_tiou:.2f}"))
    report["timelines"] = timelines
    atomic_write_text(str(out / "report.json"), json.dumps(report, indent=1, allow_nan=False),
                      "report")
    write_index(str(out), report, html_figs, html_timelines)
    logger.info("report written to %s (%d figures, %.1f s)", os.path.join(out, "index.html"),
                len(html_figs) + len(timelines), time.perf_counter() - t0)
    return report
