"""Fusion of several models' outputs on the same split (made to work: docs/differences.md s.3.7).

Raw candidate folders are read and written by ``libs/evaluation/raw_candidates.py``.

Two fusion modes, both per video (a video missing from some runs is fused from the runs that
have it):

* **pool** (:func:`fuse_pool`, the original's "pre-NMS candidate pooling"): concatenate every
  run's candidates, scores multiplied by the run's weight (weights are used as given, default 1),
  then ONE NMS with the usual settings (:class:`libs.config.schema.NmsConfig`: Gaussian soft-NMS per class,
  sigma 0.4, min score 0.001, at most 500 per video). Kept segments are clipped to
  ``[0, duration]`` as ``eval.py`` does.
* **wbf** (:func:`weighted_segment_fusion`, 1-D Weighted Box Fusion): per (video, class), all
  runs' segments in descending weighted score ``w_m * s``; each joins the FIRST cluster (in
  creation order, i.e. the highest-scored one) whose running fused segment has IoU >= ``iou_thr``
  and (``one_per_model``, default) no member of the same run yet, else it starts a new cluster.
  Fused boundaries = average of the members' boundaries weighted by ``w_m * s``. Fused score,
  ``conf_type='avg'``: ``sum(w_m * s) * min(n, M) / (n * W)`` with ``n`` members, ``M`` runs
  and ``W`` the sum of their weights (runs that have the video): with one member per run that is
  ``sum(w_m * s) / W``, the average over models, so a segment found by one of two equal-weight
  models gets half its score (standard WBF 'avg'). ``conf_type='max'``: ``max(w_m * s) / max(w)``.
  ``one_per_model`` keeps a run's own overlapping soft-NMS duplicates in separate clusters (two
  identical runs fuse to themselves; scores never exceed the inputs' maximum).

Several tasks (a unified model, candidates with JOINT labels): every step runs per task
(:func:`fuse_pool_tasks`, :func:`run_nms_tasks`, :func:`fuse_wbf_tasks`): a task's candidates never
suppress or merge with another task's, each task has its own NMS settings
(:func:`task_nms_settings`: ``test_cfg.per_task`` of the run's meta under the tool's explicit
options), and the results are concatenated per video in task order. One task: the plain functions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from libs.common.errors import UserError
from libs.config.loader import resolve_section
from libs.config.schema import NmsConfig
from libs.config.tasks import TaskLayout
from libs.ops.nms import batched_nms_videos
from libs.evaluation.raw_candidates import META_REQUIRED, Cands, raw_layout

logger = logging.getLogger(__name__)

Runs = Sequence[Mapping[str, Cands]]
_NMS_CHUNK = 256                # videos per batched_nms_videos call
_WBF_CELLS = 1 << 20            # groups x clusters per WBF chunk (memory ~ 80 MB)


def check_compatible(metas: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """All runs must share task, split and num_classes (and so the task list and each task's
    class count), else a :class:`UserError`."""
    for key in META_REQUIRED:
        vals = [m.get(key) for m in metas]
        if any(v != vals[0] for v in vals):
            shown = ", ".join(f"{n}: {v!r}" for n, v in zip(names, vals))
            raise UserError(f"raw runs differ in {key} ({shown}): expected runs of the same "
                            f"{key} to fuse")
    layouts = [raw_layout(m) for m in metas]
    if any(lay != layouts[0] for lay in layouts):
        shown = ", ".join(f"{n}: {lay.describe()}" for n, lay in zip(names, layouts))
        raise UserError(f"raw runs differ in task_num_classes ({shown}): expected runs of the "
                        "same tasks and class counts to fuse")


def union_video_ids(runs: Runs, warn: bool = True) -> List[str]:
    """Video ids of all runs: the first run's order, then new ones of later runs; ``warn``: log
    how many videos each run lacks."""
    seen: Dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run))
    ids = list(seen)
    for i, run in enumerate(runs):
        lack = len(ids) - sum(v in run for v in ids)
        if lack and warn:
            logger.warning("run %d lacks %d of %d videos: those are fused from the other runs",
                           i + 1, lack, len(ids))
    return ids


def check_weights(weights: Optional[Sequence[float]], n_runs: int) -> np.ndarray:
    """(n_runs,) float64 weights (default all 1): finite, >= 0, positive sum."""
    w = np.ones(n_runs) if weights is None else np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n_runs,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise UserError(f"bad fusion weights {[float(x) for x in np.ravel(w)]} (--weights): "
                        f"expected {n_runs} non-negative numbers, one per run, with a positive sum")
    return w


def _duration(runs: Runs, vid: str) -> float:
    durs = [float(r[vid]["duration"]) for r in runs if vid in r]
    if max(durs) - min(durs) > 1e-3 * max(durs):
        logger.warning("video '%s': runs disagree on its duration (%s); using the first",
                       vid, ", ".join(f"{d:.3f}" for d in durs))
    return durs[0]


# --------------------------------------------------------------------------------- pool + NMS

def pool_candidates(runs: Runs, weights: Optional[Sequence[float]] = None,
                    warn: bool = True) -> Dict[str, Cands]:
    """Per video, the concatenation of every run's candidates (run order), scores times the
    run's weight. Videos: :func:`union_video_ids` (``warn``: log the videos runs lack)."""
    w = check_weights(weights, len(runs))
    out: Dict[str, Cands] = {}
    for vid in union_video_ids(runs, warn):
        parts = [(r[vid], w[i]) for i, r in enumerate(runs) if vid in r]
        out[vid] = {"segments": np.concatenate([c["segments"] for c, _ in parts]).reshape(-1, 2),
                    "scores": np.concatenate([c["scores"] * np.float32(wi) for c, wi in parts]),
                    "labels": np.concatenate([c["labels"] for c, _ in parts]),
                    "duration": _duration(runs, vid)}
    return out


def run_nms(cands: Mapping[str, Cands], settings: NmsConfig) -> Dict[str, Cands]:
    """NMS of each video's candidates (seconds), kept segments clipped to ``[0, duration]``."""
    vids = list(cands)
    out: Dict[str, Cands] = {}
    for i in range(0, len(vids), _NMS_CHUNK):
        chunk = vids[i:i + _NMS_CHUNK]
        items = [(torch.from_numpy(np.asarray(cands[v]["segments"], np.float32).reshape(-1, 2)),
                  torch.from_numpy(np.asarray(cands[v]["scores"], np.float32).reshape(-1)),
                  torch.from_numpy(np.asarray(cands[v]["labels"], np.int64).reshape(-1)))
                 for v in chunk]
        kept = batched_nms_videos(items, **dataclasses.asdict(settings))
        for v, (segs, scores, labels) in zip(chunk, kept):
            dur = float(cands[v]["duration"])
            out[v] = {"segments": np.clip(segs.numpy(), 0.0, dur).astype(np.float32),
                      "scores": scores.numpy(), "labels": labels.numpy(), "duration": dur}
    return out


def fuse_pool(runs: Runs, settings: NmsConfig, weights: Optional[Sequence[float]] = None,
              warn: bool = True) -> Dict[str, Cands]:
    """Pre-NMS candidate pooling followed by one NMS per video (module docstring)."""
    return run_nms(pool_candidates(runs, weights, warn), settings)


# ----------------------------------------------------------------------------------------- WBF

@dataclass
class _Clusters:
    """The clusters of a batch of (video, class) groups: arrays (G groups, C cluster slots)."""
    start: np.ndarray           # fused start (weighted mean of its members' starts), seconds
    end: np.ndarray             # fused end, seconds
    weight: np.ndarray          # sum of the members' weighted scores
    weighted_start: np.ndarray  # sum of weighted score x start
    weighted_end: np.ndarray    # sum of weighted score x end
    max_weight: np.ndarray      # largest member weighted score
    members: np.ndarray         # number of member segments (int)
    runs: np.ndarray            # bit mask of the runs that contributed a member (int)
    count: np.ndarray           # (G,) clusters in use per group

    @classmethod
    def empty(cls, groups: int, slots: int) -> "_Clusters":
        f, i = (lambda: np.zeros((groups, slots))), (lambda: np.zeros((groups, slots), np.int64))
        return cls(f(), f(), f(), f(), f(), f(), i(), i(), np.zeros(groups, np.int64))


def _cluster_groups(sizes: np.ndarray, first_row: np.ndarray, seg_start: np.ndarray,
                    seg_end: np.ndarray, seg_weight: np.ndarray, seg_run: np.ndarray,
                    iou_thr: float, one_per_model: bool) -> _Clusters:
    """WBF clustering of several (video, class) groups at once.

    Group ``g`` holds ``sizes[g]`` segments (``sizes`` descending) at rows ``first_row[g] + k`` of
    the ``seg_*`` columns, in descending weighted score. Round ``k`` adds the k-th segment of every
    group that has one, vectorised over groups and their clusters: the same result as one
    sequential loop per group. A segment joins the first cluster (creation order) whose fused
    segment it overlaps with tIoU >= ``iou_thr`` (and, with ``one_per_model``, that has no member
    from its run yet), else it opens a new cluster.
    """
    cl = _Clusters.empty(len(sizes), int(sizes[0]))
    for k in range(int(sizes[0])):
        n_active = int(np.searchsorted(-sizes, -k, side="left"))   # groups with more than k rows
        rows = first_row[:n_active] + k
        start, end, weight = seg_start[rows], seg_end[rows], seg_weight[rows]
        run_bit = np.left_shift(1, seg_run[rows])
        in_use = cl.count[:n_active]
        target = in_use.copy()                                      # default: a new cluster
        slots = int(in_use.max()) if n_active else 0
        if slots:
            c_start, c_end = cl.start[:n_active, :slots], cl.end[:n_active, :slots]
            inter = np.clip(np.minimum(c_end, end[:, None]) - np.maximum(c_start, start[:, None]),
                            0.0, None)
            union = (c_end - c_start) + (end - start)[:, None] - inter
            tiou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            joinable = (tiou >= iou_thr) & (np.arange(slots)[None, :] < in_use[:, None])
            if one_per_model:
                joinable &= (cl.runs[:n_active, :slots] & run_bit[:, None]) == 0
            target = np.where(joinable.any(axis=1), joinable.argmax(axis=1), in_use)
        g = np.arange(n_active)
        cl.count[:n_active] += target == in_use
        cl.weight[g, target] += weight
        cl.weighted_start[g, target] += weight * start
        cl.weighted_end[g, target] += weight * end
        cl.members[g, target] += 1
        cl.runs[g, target] |= run_bit
        cl.max_weight[g, target] = np.maximum(cl.max_weight[g, target], weight)
        cl.start[g, target] = cl.weighted_start[g, target] / cl.weight[g, target]
        cl.end[g, target] = cl.weighted_end[g, target] / cl.weight[g, target]
    return cl


def weighted_segment_fusion(runs: Runs, weights: Optional[Sequence[float]] = None,
                            iou_thr: float = 0.55, skip_thr: float = 0.0, conf_type: str = "avg",
                            max_seg_num: int = 500, one_per_model: bool = True,
                            warn: bool = True) -> Dict[str, Cands]:
    """1-D Weighted Box Fusion of per-run detections (module docstring for the rule).

    ``runs``: one ``{video_id: Cands}`` per model (after each model's NMS, or its candidates),
    segments in seconds. Segments with a raw score < ``skip_thr`` or a zero weighted score are
    dropped. Returns ``{video_id: Cands}`` for the union of videos, descending score (stable),
    at most ``max_seg_num`` per video (<= 0: all), segments clipped to ``[0, duration]``.
    ``warn``: log the videos runs lack.
    """
    if conf_type not in ("avg", "max"):
        raise UserError(f"unknown WBF conf_type {conf_type!r} (fusion): expected 'avg' or 'max'")
    if not 0.0 < iou_thr <= 1.0:
        raise UserError(f"bad WBF IoU threshold ({iou_thr}): expected a value in (0, 1]")
    if len(runs) > 62:
        raise UserError(f"too many runs to fuse ({len(runs)}): expected at most 62")
    run_weight = check_weights(weights, len(runs))
    vids = union_video_ids(runs, warn)
    video_index = {v: i for i, v in enumerate(vids)}
    present = np.zeros((len(vids), len(runs)), dtype=bool)      # (V, M) video has a run's output
    parts = []                                                   # rows: video, run, start, end, score, label
    for m, run in enumerate(runs):
        for vid, c in run.items():
            present[video_index[vid], m] = True
            segs = np.asarray(c["segments"], np.float64).reshape(-1, 2)
            parts.append(np.column_stack([np.full(len(segs), video_index[vid]), np.full(len(segs), m),
                                          segs, np.asarray(c["scores"], np.float64).reshape(-1),
                                          np.asarray(c["labels"]).reshape(-1)]))
    flat = np.concatenate(parts) if parts else np.zeros((0, 6))
    seg_video, seg_run = flat[:, 0].astype(np.int64), flat[:, 1].astype(np.int64)
    seg_label = flat[:, 5].astype(np.int64)
    seg_weight = flat[:, 4] * run_weight[seg_run]                # weighted score
    n_cls = int(seg_label.max()) + 1 if len(seg_label) else 1
    seg_group = seg_video * n_cls + seg_label                    # one group per (video, class)
    kept = np.nonzero((flat[:, 4] >= skip_thr) & (seg_weight > 0))[0]
    kept = kept[np.lexsort((-seg_weight[kept], seg_group[kept]))]  # by group, weight desc; stable
    group_id, group_first, group_size = np.unique(seg_group[kept], return_index=True,
                                                  return_counts=True)
    by_size = np.argsort(-group_size, kind="stable")
    group_id, group_first, group_size = group_id[by_size], group_first[by_size], group_size[by_size]
    video_weight, video_runs = present @ run_weight, present.sum(axis=1)   # (V,)
    video_max_weight = (present * run_weight[None, :]).max(axis=1, initial=0.0)
    columns = (flat[kept, 2], flat[kept, 3], seg_weight[kept], seg_run[kept])
    fused = []                                                   # rows: group, start, end, score
    i = 0
    while i < len(group_size):                                   # batches of groups, bounded memory
        batch = slice(i, i + max(1, _WBF_CELLS // int(group_size[i])))
        cl = _cluster_groups(group_size[batch], group_first[batch], *columns, iou_thr, one_per_model)
        g, c = np.nonzero(np.arange(cl.start.shape[1])[None, :] < cl.count[:, None])
        video = group_id[batch][g] // n_cls
        members = cl.members[g, c]
        score = (cl.weight[g, c] * np.minimum(members, video_runs[video]) / (members * video_weight[video])
                 if conf_type == "avg" else cl.max_weight[g, c] / video_max_weight[video])
        fused.append(np.column_stack([group_id[batch][g], cl.start[g, c], cl.end[g, c], score]))
        i = batch.stop
    res = np.concatenate(fused) if fused else np.zeros((0, 4))
    res_video, res_label = res[:, 0].astype(np.int64) // n_cls, res[:, 0].astype(np.int64) % n_cls
    final = np.lexsort((-res[:, 3], res_video))                   # per video, score desc
    bounds = np.searchsorted(res_video[final], np.arange(len(vids) + 1))
    result: Dict[str, Cands] = {}
    for j, vid in enumerate(vids):
        dur = _duration(runs, vid)
        rows = final[bounds[j]:bounds[j + 1]][:max_seg_num if max_seg_num > 0 else None]
        result[vid] = {"segments": np.clip(res[rows, 1:3], 0.0, dur).astype(np.float32),
                       "scores": res[rows, 3].astype(np.float32), "labels": res_label[rows],
                       "duration": dur}
    logger.info("WBF: %d runs, %d videos, %d segments in, %d fused", len(runs), len(vids),
                len(kept), len(res))
    return result


def detections_list(dets: Mapping[str, Cands], video_ids: Optional[Sequence[str]] = None
                    ) -> List[Dict[str, Any]]:
    """``{video_id: Cands}`` -> the per-video dicts (with ``video_id``) that
    ``detections_to_submission`` and ``predictions_from_detections`` take."""
    ids = list(dets) if video_ids is None else [v for v in video_ids if v in dets]
    return [{"video_id": v, **{k: dets[v][k] for k in ("segments", "scores", "labels")}}
            for v in ids]


# ------------------------------------------------------------------------------ several tasks

def task_candidates(cands: Mapping[str, Cands], layout: TaskLayout, task: str) -> Dict[str, Cands]:
    """The candidates of ``task`` (JOINT labels in its class range, kept as they are), every
    video kept (empty arrays where the task has none). One task: ``cands`` as they are."""
    if not layout.multi:
        return dict(cands)
    lo, hi = layout.class_range(task)
    out: Dict[str, Cands] = {}
    for vid, c in cands.items():
        labels = np.asarray(c["labels"]).reshape(-1)
        keep = (labels >= lo) & (labels < hi)
        out[vid] = {"segments": np.asarray(c["segments"]).reshape(-1, 2)[keep],
                    "scores": np.asarray(c["scores"]).reshape(-1)[keep], "labels": labels[keep],
                    "duration": c["duration"]}
    return out


def concat_tasks(parts: Sequence[Mapping[str, Cands]]) -> Dict[str, Cands]:
    """Per video (the first part's order, then new ones), the parts' rows one after the other
    (task order). One part: that part."""
    if len(parts) == 1:
        return dict(parts[0])
    vids: Dict[str, None] = {}
    for part in parts:
        vids.update(dict.fromkeys(part))
    out: Dict[str, Cands] = {}
    for vid in vids:
        have = [part[vid] for part in parts if vid in part]
        out[vid] = {"segments": np.concatenate([np.asarray(c["segments"]).reshape(-1, 2)
                                                for c in have]),
                    "scores": np.concatenate([np.asarray(c["scores"]).reshape(-1) for c in have]),
                    "labels": np.concatenate([np.asarray(c["labels"]).reshape(-1) for c in have]),
                    "duration": have[0]["duration"]}
    return out


def run_nms_tasks(cands: Mapping[str, Cands], layout: TaskLayout,
                  settings: Sequence[NmsConfig]) -> Dict[str, Cands]:
    """:func:`run_nms` of each task's candidates with that task's ``settings`` (task order)."""
    return concat_tasks([run_nms(task_candidates(cands, layout, task), settings[i])
                         for i, task, _, _ in layout])


def fuse_pool_tasks(runs: Runs, layout: TaskLayout, settings: Sequence[NmsConfig],
                    weights: Optional[Sequence[float]] = None) -> Dict[str, Cands]:
    """:func:`fuse_pool` per task (``settings`` one per task, task order)."""
    return concat_tasks([fuse_pool([task_candidates(r, layout, task) for r in runs], settings[i],
                                   weights, warn=i == 0) for i, task, _, _ in layout])


def fuse_wbf_tasks(runs: Runs, layout: TaskLayout, *, weights: Optional[Sequence[float]],
                   iou_thr: float, skip_thr: float, conf_type: str, max_seg_num: Sequence[int],
                   one_per_model: bool = True) -> Dict[str, Cands]:
    """:func:`weighted_segment_fusion` per task (``max_seg_num`` one per task, task order)."""
    return concat_tasks([weighted_segment_fusion([task_candidates(r, layout, task) for r in runs],
                                                 weights, iou_thr, skip_thr, conf_type,
                                                 max_seg_num[i], one_per_model, warn=i == 0)
                         for i, task, _, _ in layout])


def task_nms_settings(base: Mapping[str, Any], explicit: Sequence[str], meta: Mapping[str, Any],
                      layout: TaskLayout, where: str) -> List[NmsConfig]:
    """The NMS settings of each task (task order) for a run with raw ``meta``: ``base`` (the
    ``test_cfg.nms`` keys of the tool's options) overlaid with the run's
    ``test_cfg.per_task.<task>.nms`` (as eval.py applies it, libs/config/tasks.py
    ``task_test_cfg``) except the keys in ``explicit`` (options given on the command line, which
    win). ``where`` names the meta file in errors."""
    test_cfg = meta.get("test_cfg") or {}
    per_task = (test_cfg.get("per_task") if isinstance(test_cfg, dict) else None) or {}
    out: List[NmsConfig] = []
    for _, task, _, _ in layout:
        overlay = per_task.get(task) if isinstance(per_task, dict) else None
        overlay = (overlay.get("nms") if isinstance(overlay, dict) else overlay) or {}
        if not isinstance(overlay, dict):
            raise UserError(f"bad test_cfg.per_task.{task} ({where}): expected a mapping of "
                            f"test_cfg keys with an 'nms' mapping, got {overlay!r}")
        raw = {**dict(base), **{k: v for k, v in overlay.items() if k not in explicit}}
        out.append(resolve_section("test_cfg.nms", raw, f"{where}: test_cfg.per_task.{task}.nms"
                                   if overlay else where))
    return out
