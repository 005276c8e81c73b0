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
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from libs.common.errors import UserError
from libs.config.schema import NmsConfig
from libs.ops.nms import batched_nms_videos
from libs.evaluation.raw_candidates import META_REQUIRED, Cands

logger = logging.getLogger(__name__)

Runs = Sequence[Mapping[str, Cands]]
_NMS_CHUNK = 256                # videos per batched_nms_videos call
_WBF_CELLS = 1 << 20            # groups x clusters per WBF chunk (memory ~ 80 MB)


def check_compatible(metas: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """All runs must share task, split and num_classes, else a :class:`UserError`."""
    for key in META_REQUIRED:
        vals = [m.get(key) for m in metas]
        if any(v != vals[0] for v in vals):
            shown = ", ".join(f"{n}: {v!r}" for n, v in zip(names, vals))
            raise UserError(f"raw runs differ in {key} ({shown}): expected runs of the same "
                            f"{key} to fuse")


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

def pool_candidates(runs: Runs, weights: Optional[Sequence[float]] = None) -> Dict[str, Cands]:
    """Per video, the concatenation of every run's candidates (run order), scores times the
    run's weight. Videos: :func:`union_video_ids`."""
    w = check_weights(weights, len(runs))
    out: Dict[str, Cands] = {}
    for vid in union_video_ids(runs):
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


def fuse_pool(runs: Runs, settings: NmsConfig,
              weights: Optional[Sequence[float]] = None) -> Dict[str, Cands]:
    """Pre-NMS candidate pooling followed by one NMS per video (module docstring)."""
    return run_nms(pool_candidates(runs, weights), settings)


# ----------------------------------------------------------------------------------------- WBF

def _wbf_groups(sizes: np.ndarray, starts: np.ndarray, s: np.ndarray, e: np.ndarray,
                ws: np.ndarray, model: np.ndarray, iou_thr: float, one_per_model: bool
                ) -> Dict[str, np.ndarray]:
    """Cluster groups (sizes descending; rows of group g at ``starts[g] + r``, descending ws).

    Round ``r`` adds the r-th segment of every group at once (vectorised over groups and their
    clusters), which is the same as one sequential loop per group. Returns per-cluster arrays
    (G, C) and ``ncl`` (G,).
    """
    g_n, c_n = len(sizes), int(sizes[0])
    z = lambda dt=np.float64: np.zeros((g_n, c_n), dtype=dt)  # noqa: E731
    acc = {"fs": z(), "fe": z(), "sw": z(), "ss": z(), "se": z(), "mx": z(), "cnt": z(np.int64),
           "bits": z(np.int64)}
    ncl = np.zeros(g_n, dtype=np.int64)
    neg_sizes = -sizes
    for r in range(c_n):
        a = int(np.searchsorted(neg_sizes, -r, side="left"))     # groups with size > r
        idx = starts[:a] + r
        si, ei, wi, bit = s[idx], e[idx], ws[idx], np.left_shift(1, model[idx])
        nc = ncl[:a]
        cmax = int(nc.max()) if a else 0
        col = nc.copy()
        if cmax:
            cs, ce = acc["fs"][:a, :cmax], acc["fe"][:a, :cmax]
            inter = np.clip(np.minimum(ce, ei[:, None]) - np.maximum(cs, si[:, None]), 0.0, None)
            union = (ce - cs) + (ei - si)[:, None] - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            ok = (iou >= iou_thr) & (np.arange(cmax)[None, :] < nc[:, None])
            if one_per_model:
                ok &= (acc["bits"][:a, :cmax] & bit[:, None]) == 0
            has = ok.any(axis=1)
            col = np.where(has, ok.argmax(axis=1), nc)
        rows = np.arange(a)
        ncl[:a] += col == nc
        acc["sw"][rows, col] += wi
        acc["ss"][rows, col] += wi * si
        acc["se"][rows, col] += wi * ei
        acc["cnt"][rows, col] += 1
        acc["bits"][rows, col] |= bit
        acc["mx"][rows, col] = np.maximum(acc["mx"][rows, col], wi)
        acc["fs"][rows, col] = acc["ss"][rows, col] / acc["sw"][rows, col]
        acc["fe"][rows, col] = acc["se"][rows, col] / acc["sw"][rows, col]
    acc["ncl"] = ncl
    return acc


def weighted_segment_fusion(runs: Runs, weights: Optional[Sequence[float]] = None,
                            iou_thr: float = 0.55, skip_thr: float = 0.0, conf_type: str = "avg",
                            max_seg_num: int = 500, one_per_model: bool = True) -> Dict[str, Cands]:
    """1-D Weighted Box Fusion of per-run detections (module docstring for the rule).

    ``runs``: one ``{video_id: Cands}`` per model (after each model's NMS, or its candidates),
    segments in seconds. Segments with a raw score < ``skip_thr`` or a zero weighted score are
    dropped. Returns ``{video_id: Cands}`` for the union of videos, descending score (stable),
    at most ``max_seg_num`` per video (<= 0: all), segments clipped to ``[0, duration]``.
    """
    if conf_type not in ("avg", "max"):
        raise UserError(f"unknown WBF conf_type {conf_type!r} (fusion): expected 'avg' or 'max'")
    if not 0.0 < iou_thr <= 1.0:
        raise UserError(f"bad WBF IoU threshold ({iou_thr}): expected a value in (0, 1]")
    if len(runs) > 62:
        raise UserError(f"too many runs to fuse ({len(runs)}): expected at most 62")
    w = check_weights(weights, len(runs))
    vids = union_video_ids(runs)
    code = {v: i for i, v in enumerate(vids)}
    present = np.zeros((len(vids), len(runs)), dtype=bool)
    parts = []                                  # rows: video, run, start, end, score, label
    for m, run in enumerate(runs):
        for vid, c in run.items():
            present[code[vid], m] = True
            segs = np.asarray(c["segments"], np.float64).reshape(-1, 2)
            parts.append(np.column_stack([np.full(len(segs), code[vid]), np.full(len(segs), m),
                                          segs, np.asarray(c["scores"], np.float64).reshape(-1),
                                          np.asarray(c["labels"]).reshape(-1)]))
    flat = np.concatenate(parts) if parts else np.zeros((0, 6))
    v_c, m_c, lab = flat[:, 0].astype(np.int64), flat[:, 1].astype(np.int64), flat[:, 5].astype(np.int64)
    ws = flat[:, 4] * w[m_c]
    n_cls = int(lab.max()) + 1 if len(lab) else 1
    group = v_c * n_cls + lab
    order = np.nonzero((flat[:, 4] >= skip_thr) & (ws > 0))[0]
    order = order[np.lexsort((-ws[order], group[order]))]        # by group, then ws desc; stable
    g_codes, g_start, g_size = np.unique(group[order], return_index=True, return_counts=True)
    by_size = np.argsort(-g_size, kind="stable")
    g_codes, g_start, g_size = g_codes[by_size], g_start[by_size], g_size[by_size]
    w_video, m_video = present @ w, present.sum(axis=1)          # (V,) weights / runs present
    wmax_video = (present * w[None, :]).max(axis=1, initial=0.0)
    s_o, e_o, ws_o, m_o = flat[order, 2], flat[order, 3], ws[order], m_c[order]
    out = []                                                     # (group, start, end, score)
    i = 0
    while i < len(g_size):
        sl = slice(i, i + max(1, _WBF_CELLS // int(g_size[i])))
        acc = _wbf_groups(g_size[sl], g_start[sl], s_o, e_o, ws_o, m_o, iou_thr, one_per_model)
        gi, ci = np.nonzero(np.arange(acc["fs"].shape[1])[None, :] < acc["ncl"][:, None])
        vg = g_codes[sl][gi] // n_cls
        cnt = acc["cnt"][gi, ci]
        score = (acc["sw"][gi, ci] * np.minimum(cnt, m_video[vg]) / (cnt * w_video[vg])
                 if conf_type == "avg" else acc["mx"][gi, ci] / wmax_video[vg])
        out.append(np.column_stack([g_codes[sl][gi], acc["fs"][gi, ci], acc["fe"][gi, ci], score]))
        i = sl.stop
    res = np.concatenate(out) if out else np.zeros((0, 4))
    fv, flab = res[:, 0].astype(np.int64) // n_cls, res[:, 0].astype(np.int64) % n_cls
    final = np.lexsort((-res[:, 3], fv))                         # per video, score desc
    bounds = np.searchsorted(fv[final], np.arange(len(vids) + 1))
    result: Dict[str, Cands] = {}
    for j, vid in enumerate(vids):
        dur = _duration(runs, vid)
        rows = final[bounds[j]:bounds[j + 1]][:max_seg_num if max_seg_num > 0 else None]
        result[vid] = {"segments": np.clip(res[rows, 1:3], 0.0, dur).astype(np.float32),
                       "scores": res[rows, 3].astype(np.float32), "labels": flab[rows],
                       "duration": dur}
    logger.info("WBF: %d runs, %d videos, %d segments in, %d fused", len(runs), len(vids),
                len(order), len(res))
    return result


def detections_list(dets: Mapping[str, Cands], video_ids: Optional[Sequence[str]] = None
                    ) -> List[Dict[str, Any]]:
    """``{video_id: Cands}`` -> the per-video dicts (with ``video_id``) that
    ``detections_to_submission`` and ``predictions_from_detections`` take."""
    ids = list(dets) if video_ids is None else [v for v in video_ids if v in dets]
    return [{"video_id": v, **{k: dets[v][k] for k in ("segments", "scores", "labels")}}
            for v in ids]
