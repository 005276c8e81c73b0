"""Fusion of several models' outputs on the same split (seed s.6.6, made to work).

Raw candidate directories (written by ``eval.py --save-raw DIR``)::

    DIR/meta.json         {"format", "task", "split", "num_classes", "checkpoint", "test_cfg", ...}
    DIR/<video_id>.npz    segments (N, 2) float32 SECONDS (pre-NMS, not clipped), scores (N,)
                          float32, labels (N,) int64, duration () float64 seconds

Candidates are stored in seconds, so models with different time grids can be pooled (the original
concatenated grid cells and needed the same 192-cell grid everywhere).

Two fusion modes, both per video (a video missing from some runs is fused from the runs that
have it):

* **pool** (:func:`fuse_pool`, the original's "pre-NMS candidate pooling"): concatenate every
  run's candidates, scores multiplied by the run's weight (weights are used as given, default 1),
  then ONE NMS with the usual settings (:class:`NmsSettings`: Gaussian soft-NMS per class,
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

import json
import logging
import math
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from libs.core.errors import UserError, format_problems
from libs.utils.io import atomic_path
from libs.utils.metrics import as_numpy
from libs.utils.nms import batched_nms_videos
from libs.utils.submission import write_json

logger = logging.getLogger(__name__)

RAW_FORMAT = "perception-raw-candidates/1"
META_NAME = "meta.json"
META_REQUIRED = ("task", "split", "num_classes")
NPZ_KEYS = ("segments", "scores", "labels", "duration")
Cands = Dict[str, Any]          # segments (N, 2) float32 s, scores (N,), labels (N,) int64, duration
Runs = Sequence[Mapping[str, Cands]]
_NMS_CHUNK = 256                # videos per batched_nms_videos call
_WBF_CELLS = 1 << 20            # groups x clusters per WBF chunk (memory ~ 80 MB)


@dataclass(frozen=True)
class NmsSettings:
    """NMS parameters of :func:`libs.utils.nms.batched_nms` (defaults: the original fusion)."""
    iou_threshold: float = 0.1
    min_score: float = 0.001
    max_seg_num: int = 500
    use_soft_nms: bool = True
    multiclass: bool = True
    sigma: float = 0.4
    voting_thresh: float = 0.9
    soft_method: str = "gaussian"
    backend: str = "auto"

    @classmethod
    def from_test_cfg(cls, test_cfg: Mapping[str, Any]) -> "NmsSettings":
        """From a config's ``test_cfg`` (as ``libs/core/engine.py: predict`` reads it)."""
        method = test_cfg["nms_method"]
        return cls(float(test_cfg["iou_threshold"]), float(test_cfg["min_score"]),
                   int(test_cfg["max_seg_num"]), method != "hard", bool(test_cfg["multiclass_nms"]),
                   float(test_cfg["nms_sigma"]), float(test_cfg["voting_thresh"]),
                   "linear" if method == "linear" else "gaussian", str(test_cfg["nms_backend"]))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------- raw candidates

def _check_video_id(video_id: str) -> str:
    vid = str(video_id)
    if not vid or vid.startswith(".") or any(c in vid for c in "/\\\0"):
        raise UserError(f"bad video id {vid!r} (raw candidates): expected a name usable as a file "
                        "name (no '/', '\\', leading '.')")
    return vid


def prepare_raw_dir(out_dir: str, overwrite: bool = False) -> Path:
    """Create ``out_dir``; one holding raw files is a :class:`UserError` unless ``overwrite``,
    which deletes its ``*.npz`` and ``meta.json`` (nothing else)."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"raw output is not a folder ({path}): expected a folder for --save-raw")
    old = sorted(path.glob("*.npz")) + ([path / META_NAME] if (path / META_NAME).exists() else [])
    if old and not overwrite:
        raise UserError(f"raw candidate folder not empty ({path}, {len(old)} files): pass "
                        "--overwrite to replace them or choose another folder")
    for f in old:
        f.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_raw_candidates(out_dir: str, video_id: str, segments_s: Any, scores: Any, labels: Any,
                        duration: float) -> str:
    """Write ``out_dir/<video_id>.npz`` atomically. ``segments_s`` (N, 2) seconds, ``scores``
    (N,), ``labels`` (N,) (numpy or torch), ``duration`` seconds. Returns the file path."""
    vid = _check_video_id(video_id)
    segs = as_numpy(segments_s).astype(np.float32).reshape(-1, 2)
    sc = as_numpy(scores).astype(np.float32).reshape(-1)
    lab = as_numpy(labels).astype(np.int64).reshape(-1)
    assert len(segs) == len(sc) == len(lab), f"video '{vid}': candidate column lengths differ"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, vid + ".npz")
    with atomic_path(path, "raw candidates") as tmp, open(tmp, "wb") as f:
        np.savez(f, segments=segs, scores=sc, labels=lab, duration=np.float64(duration))
    return path


def raw_candidate_hook(out_dir: str) -> Callable[[str, Mapping[str, Any], Any], None]:
    """A ``raw_hook`` for ``engine.predict``: converts the grid-cell candidates to (unclipped)
    seconds with the video's ``TimeGrid`` and saves them with :func:`save_raw_candidates`."""
    def hook(video_id: str, cand: Mapping[str, Any], grid: Any) -> None:
        segs = grid.to_seconds(cand["segments"].detach().float().cpu())
        save_raw_candidates(out_dir, video_id, segs, cand["scores"], cand["labels"], grid.duration)
    return hook


def write_raw_meta(out_dir: str, meta: Mapping[str, Any]) -> str:
    """Write ``out_dir/meta.json`` (``task``, ``split``, ``num_classes`` required; also e.g.
    ``checkpoint``, ``test_cfg``, ``video_ids``: then :func:`load_raw_dir` checks that every listed
    video has its file). Returns the path."""
    missing = [k for k in META_REQUIRED if k not in meta]
    assert not missing, f"raw meta lacks {missing}"
    path = os.path.join(out_dir, META_NAME)
    write_json({"format": RAW_FORMAT, **dict(meta)}, path, overwrite=True)
    return path


def _read_meta(folder: Path) -> Dict[str, Any]:
    path = folder / META_NAME
    if not path.is_file():
        raise UserError(f"raw candidate meta missing ({path}): expected a folder written by "
                        "eval.py --save-raw")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"unreadable raw candidate meta ({path}): {err}") from None
    bad = [] if isinstance(meta, dict) else ["not a mapping"]
    if not bad:
        bad = [f"missing '{k}'" for k in META_REQUIRED if k not in meta]
        n = meta.get("num_classes", 1)
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            bad.append(f"num_classes {n!r} is not an int >= 1")
    if bad:
        raise UserError(f"bad raw candidate meta ({path}): {'; '.join(bad)}; expected task, split, "
                        "num_classes")
    return meta


def _read_npz(path: Path, num_classes: int, problems: List[str]) -> Optional[Cands]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                problems.append(f"{path}: missing {', '.join(missing)}")
                return None
            segs, scores, labels = z["segments"], z["scores"], z["labels"]
            duration = float(np.asarray(z["duration"]).reshape(-1)[0])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, IndexError) as err:
        problems.append(f"{path}: unreadable npz ({type(err).__name__}: {err})")
        return None
    n = len(scores)
    if segs.shape != (n, 2) or labels.shape != (n,) or scores.ndim != 1:
        problems.append(f"{path}: shapes {segs.shape}, {scores.shape}, {labels.shape}, expected "
                        "(N, 2), (N,), (N,)")
    elif not (np.all(np.isfinite(segs)) and np.all(np.isfinite(scores))):
        problems.append(f"{path}: non-finite segments or scores")
    elif n and np.any(segs[:, 1] < segs[:, 0]):
        problems.append(f"{path}: segments with end < start, expected [start, end] seconds")
    elif not np.issubdtype(labels.dtype, np.integer) or (n and (labels.min() < 0
                                                               or labels.max() >= num_classes)):
        problems.append(f"{path}: labels outside [0, {num_classes})")
    elif not (math.isfinite(duration) and duration > 0):
        problems.append(f"{path}: duration {duration}, expected > 0 seconds")
    else:
        return {"segments": segs.astype(np.float32), "scores": scores.astype(np.float32),
                "labels": labels.astype(np.int64), "duration": duration}
    return None


def load_raw_dir(path: str) -> Tuple[Dict[str, Any], Dict[str, Cands]]:
    """Read a raw candidate folder -> ``(meta, {video_id: Cands})`` (videos in file-name order).
    Every problem (missing meta, missing or corrupt npz, bad arrays) is a :class:`UserError`."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"raw candidate folder not found ({folder}): expected a folder written by "
                        "eval.py --save-raw")
    meta = _read_meta(folder)
    files = sorted(folder.glob("*.npz"))
    problems: List[str] = []
    listed = meta.get("video_ids")
    if isinstance(listed, list):
        have = {f.stem for f in files}
        problems += [f"{folder / (str(v) + '.npz')}: missing (listed in {META_NAME})"
                     for v in listed if str(v) not in have]
    if not files and not problems:
        raise UserError(f"no raw candidate files ({folder}): expected <video_id>.npz files")
    runs: Dict[str, Cands] = {}
    for f in files:
        cands = _read_npz(f, int(meta["num_classes"]), problems)
        if cands is not None:
            runs[f.stem] = cands
    if problems:
        raise UserError(format_problems(problems, f"bad raw candidates ({folder}), "
                                                  f"{len(problems)} problem(s)"))
    logger.info("%s: %d videos, %d candidates", folder, len(runs),
                sum(len(c["scores"]) for c in runs.values()))
    return meta, runs


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


def run_nms(cands: Mapping[str, Cands], settings: NmsSettings = NmsSettings()) -> Dict[str, Cands]:
    """NMS of each video's candidates (seconds), kept segments clipped to ``[0, duration]``."""
    vids = list(cands)
    out: Dict[str, Cands] = {}
    for i in range(0, len(vids), _NMS_CHUNK):
        chunk = vids[i:i + _NMS_CHUNK]
        items = [(torch.from_numpy(np.asarray(cands[v]["segments"], np.float32).reshape(-1, 2)),
                  torch.from_numpy(np.asarray(cands[v]["scores"], np.float32).reshape(-1)),
                  torch.from_numpy(np.asarray(cands[v]["labels"], np.int64).reshape(-1)))
                 for v in chunk]
        kept = batched_nms_videos(items, **settings.to_dict())
        for v, (segs, scores, labels) in zip(chunk, kept):
            dur = float(cands[v]["duration"])
            out[v] = {"segments": np.clip(segs.numpy(), 0.0, dur).astype(np.float32),
                      "scores": scores.numpy(), "labels": labels.numpy(), "duration": dur}
    return out


def fuse_pool(runs: Runs, weights: Optional[Sequence[float]] = None,
              settings: NmsSettings = NmsSettings()) -> Dict[str, Cands]:
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
