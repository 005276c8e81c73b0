"""1-D non-maximum suppression of temporal segments (hard, linear and Gaussian soft-NMS).

One entry point with three interchangeable backends (algorithm: docs/numerics.md s.7.2):

* ``'cuda'``: compiled CUDA kernel, every (video, class) group of a batch in one launch;
* ``'cpp'``: compiled CPU kernel (``libs/ops/csrc/``);
* ``'torch'``: pure PyTorch, one group at a time, each suppression step vectorised;
* ``'auto'``: ``cuda`` for CUDA tensors when built with CUDA, else ``cpp`` when built, else
  ``torch`` with one logging warning per process.

The extension is optional: importing this module never needs it. Build it with
``python setup.py build_ext --inplace`` (``make ext``).

Algorithm, per group (all float32; IoU = inter / (len_i + len_j - inter), len = x2 - x1 + 1e-6):

* hard: drop scores ``<= min_score`` (when ``min_score > 0``), sort by descending score,
  greedily keep a segment and suppress later ones with IoU >= ``iou_threshold``;
* soft: the reference loop: pick the highest score (ties: earliest current position), swap it
  into place, decay the others by ``w`` (Gaussian ``exp(-iou^2 / sigma)``, no factor 2,
  ``iou_threshold`` unused; linear ``1 - iou`` when ``iou >= iou_threshold``), and drop a segment
  whose score falls ``< min_score`` by copying the last one into its slot.

Each group keeps at most ``max_seg_num`` segments in pick order. Groups are the classes of a video
in ascending order (``multiclass``) or the whole video (class-agnostic, then score-weighted
segment voting when ``voting_thresh > 0``). Finally each video's detections are sorted by
descending score with a STABLE sort (ties keep the class-then-pick order; the reference's
unstable sort leaves tie order implementation-defined) and cut to ``max_seg_num``.
``max_seg_num <= 0`` means no cap (the reference would return nothing for 0).
"""
from __future__ import annotations

import importlib
import logging
from typing import Optional, Sequence

import torch
from torch import Tensor

from libs.common.errors import UserError

logger = logging.getLogger(__name__)

BUILD_COMMAND = "python setup.py build_ext --inplace"
_METHODS = {"hard": 0, "linear": 1, "gaussian": 2}   # the kernels' method codes
_BACKENDS = ("auto", "cpp", "cuda", "torch")

Detections = tuple[Tensor, Tensor, Tensor]  # segs (K, 2) float32, scores (K,) float32, labels (K,) int64

_ext = None  # the compiled module, once loaded
_ext_error: Optional[str] = None  # why it could not be loaded
_ext_tried = False
_warned = False


def _load_extension():
    """Import ``libs.ops._nms_ext`` once; ``None`` (and the reason kept) if it is not built."""
    global _ext, _ext_error, _ext_tried
    if not _ext_tried:
        _ext_tried = True
        try:
            _ext = importlib.import_module("libs.ops._nms_ext")
        except (ImportError, OSError) as err:  # not built, or built against another torch
            _ext, _ext_error = None, f"{type(err).__name__}: {err}"
    return _ext


def built_backends() -> tuple[str, ...]:
    """The backends usable in this process, e.g. ``('cpp', 'torch')``."""
    ext = _load_extension()
    names = []
    if ext is not None:
        names.append("cpp")
        if ext.with_cuda() and torch.cuda.is_available():
            names.append("cuda")
    return tuple(names) + ("torch",)


def _resolve_backend(backend: str, device: torch.device) -> str:
    global _warned
    if backend not in _BACKENDS:
        raise ValueError(f"unknown NMS backend {backend!r}: expected one of {', '.join(_BACKENDS)}")
    ext = _load_extension()
    if backend == "auto":
        if ext is not None:
            return "cuda" if device.type == "cuda" and ext.with_cuda() else "cpp"
        if not _warned:
            _warned = True
            logger.warning("the compiled NMS extension (libs.ops._nms_ext) is not built (%s); "
                           "using the slower pure-PyTorch NMS. Build it with `%s` (make ext).",
                           _ext_error, BUILD_COMMAND)
        return "torch"
    if backend in ("cpp", "cuda") and ext is None:
        raise UserError(f"NMS backend {backend!r} (test_cfg.nms.backend): the compiled extension "
                        f"libs.ops._nms_ext is not built ({_ext_error}); run `{BUILD_COMMAND}` "
                        "(make ext) or use 'auto' / 'torch'")
    if backend == "cuda":
        if not ext.with_cuda():
            raise UserError("NMS backend 'cuda' (test_cfg.nms.backend): the extension was built without "
                            f"CUDA; rebuild it with nvcc available: `{BUILD_COMMAND}`")
        if device.type != "cuda":
            raise UserError(f"NMS backend 'cuda' (test_cfg.nms.backend): needs tensors on a CUDA device, "
                            f"got {device}")
    return backend


# ------------------------------------------------------------------------------------------------
# torch fallback: one group at a time, each step vectorised over the remaining candidates


def _iou_row(buf: Tensor, i: int, rest: Tensor) -> Tensor:
    """IoU of column ``i`` of ``buf`` (4, n) = (x1, x2, score, len) with columns ``rest`` (4, R),
    in the kernels' float32 operation order."""
    inter = (torch.minimum(buf[1, i], rest[1]) - torch.maximum(buf[0, i], rest[0])).clamp_(min=0)
    return inter / (buf[3, i] + rest[3] - inter)


def _hard_group_torch(buf: Tensor, thr: float, min_score: float, max_num: int) -> Tensor:
    """Hard NMS on rows sorted by descending score; returns the kept rows (K,) in order."""
    m = buf.shape[1]
    sel = buf[2] > min_score if min_score > 0 else torch.ones(m, dtype=torch.bool, device=buf.device)
    kept: list[int] = []
    i = 0
    while i < m and (max_num <= 0 or len(kept) < max_num):
        i += int(torch.argmax(sel[i:].to(torch.uint8)))  # next selected row (or i if none)
        if not bool(sel[i]):
            break
        kept.append(i)
        if i + 1 < m:
            sel[i + 1:] &= _iou_row(buf, i, buf[:, i + 1:]) < thr
        i += 1
    return torch.tensor(kept, dtype=torch.long, device=buf.device)


def _soft_group_torch(buf: Tensor, thr: float, min_score: float, sigma: Tensor, method: int,
                      max_num: int) -> tuple[Tensor, Tensor]:
    """Soft-NMS on rows in original order (``buf`` (4, n) is modified); returns (rows, scores).

    Dead rows are removed exactly where the reference's "copy the last row into slot p" loop
    puts things: with k survivors after row i, the dead slots of [i+1, i+1+k) (ascending) get
    the survivors of [i+1+k, n) in descending position order.
    """
    n = buf.shape[1]
    ind = torch.arange(n, device=buf.device)
    limit = n if max_num <= 0 else min(n, max_num)
    i = 0
    while i < n and i < limit:
        m = i + int(torch.argmax(buf[2, i:n]))  # first maximum = the strict `<` scan
        if m != i:
            col = buf[:, i].clone()
            buf[:, i] = buf[:, m]
            buf[:, m] = col
            ind[i], ind[m] = ind[m].clone(), ind[i].clone()
        if i + 1 < n:
            rest = buf[:, i + 1:n]
            ovr = _iou_row(buf, i, rest)
            if method == _METHODS["linear"]:
                w = torch.where(ovr >= thr, 1 - ovr, torch.ones_like(ovr))
            else:
                w = torch.exp(-(ovr * ovr) / sigma)
            rest[2] *= w
            alive = ~(rest[2] < min_score)
            k = int(alive.sum())
            if k < rest.shape[1]:
                a0 = i + 1
                dst = torch.nonzero(~alive[:k]).squeeze(1) + a0
                src = torch.nonzero(alive[k:]).squeeze(1).flip(0) + (a0 + k)
                buf[:, dst] = buf[:, src]
                ind[dst] = ind[src]
                n = a0 + k
        i += 1
    cnt = min(i, n)
    return ind[:cnt], buf[2, :cnt].clone()


def _nms_groups_torch(segs: Tensor, scores: Tensor, offsets: Tensor, iou_threshold: float,
                      min_score: float, sigma: float, method: int,
                      max_num: int) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as the compiled ``nms_groups`` (see csrc/nms.h)."""
    n, g = segs.shape[0], offsets.shape[0] - 1
    keep = torch.full((n,), -1, dtype=torch.long, device=segs.device)
    out_scores = torch.zeros(n, dtype=torch.float32, device=segs.device)
    counts = torch.zeros(g, dtype=torch.long, device=segs.device)
    lens = (segs[:, 1] - segs[:, 0]) + torch.tensor(1e-6, dtype=torch.float32, device=segs.device)
    allbuf = torch.stack([segs[:, 0], segs[:, 1], scores, lens])  # (4, N)
    sigma_t = torch.tensor(sigma, dtype=torch.float32, device=segs.device)
    off = offsets.tolist()
    for k in range(g):
        s, e = off[k], off[k + 1]
        if e == s:
            continue
        buf = allbuf[:, s:e].clone()
        if method == _METHODS["hard"]:
            rows = _hard_group_torch(buf, iou_threshold, min_score, max_num)
            sc = buf[2, rows]
        else:
            rows, sc = _soft_group_torch(buf, iou_threshold, min_score, sigma_t, method, max_num)
        c = rows.numel()
        keep[s:s + c] = rows + s
        out_scores[s:s + c] = sc
        counts[k] = c
    return keep, out_scores, counts


# ------------------------------------------------------------------------------------------------
# public API


def seg_voting(nms_segs: Tensor, all_segs: Tensor, all_scores: Tensor, iou_threshold: float) -> Tensor:
    """Score-weighted segment voting: each kept segment (K, 2) becomes the average of the
    pre-NMS segments (N, 2) with IoU >= ``iou_threshold``, weighted by score * IoU (no 1e-6 in
    the lengths here, as in the reference). Returns (K, 2) float32."""
    left = torch.maximum(nms_segs[:, None, 0], all_segs[None, :, 0])
    right = torch.minimum(nms_segs[:, None, 1], all_segs[None, :, 1])
    inter = (right - left).clamp(min=0)
    nms_len = nms_segs[:, 1] - nms_segs[:, 0]
    all_len = all_segs[:, 1] - all_segs[:, 0]
    iou = inter / (nms_len[:, None] + all_len[None, :] - inter)  # (K, N)
    weights = (iou >= iou_threshold).to(all_scores.dtype) * all_scores[None, :] * iou
    weights /= torch.sum(weights, dim=1, keepdim=True)
    return weights @ all_segs


def _check_items(items: Sequence[Detections]) -> Optional[torch.device]:
    device = None
    for v, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(f"NMS input (item {v}): expected a (segs, scores, labels) tuple")
        segs, scores, labels = item
        n = scores.shape[0] if scores.dim() == 1 else -1
        if n < 0 or labels.shape != (n,) or (segs.shape != (n, 2) and not (n == 0 and segs.numel() == 0)):
            raise ValueError(f"NMS input (item {v}): expected segs (N, 2), scores (N,), labels (N,),"
                             f" got {tuple(segs.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}")
        if not (segs.is_floating_point() and scores.is_floating_point()) or labels.is_floating_point():
            raise ValueError(f"NMS input (item {v}): expected float segs and scores and integer "
                             f"labels, got {segs.dtype}, {scores.dtype}, {labels.dtype}")
        if n and not bool(torch.isfinite(scores).all()):
            raise ValueError(f"NMS input (item {v}): scores must be finite")
        for t in (segs, scores, labels):
            if device is None:
                device = t.device
            elif t.device != device:
                raise ValueError(f"NMS input (item {v}): all tensors must be on one device, got "
                                 f"{device} and {t.device}")
    return device


def batched_nms_videos(items: Sequence[Detections], *, method: str, iou_threshold: float,
                       sigma: float, min_score: float, max_seg_num: int, multiclass: bool,
                       voting_thresh: float, backend: str) -> list[Detections]:
    """NMS for several videos at once; same parameters and result as :func:`batched_nms` applied
    to each item ``(segs (N_v, 2), scores (N_v,), labels (N_v,))`` (grid cells or seconds).

    Returns one ``(segs (K_v, 2) float32, scores (K_v,) float32, labels (K_v,) int64)`` per item,
    on the input device. The compiled backends handle all groups of the batch in one call (one
    kernel launch on CUDA).
    """
    if method not in _METHODS:
        raise ValueError(f"unknown NMS method {method!r}: expected one of {', '.join(_METHODS)}")
    method = _METHODS[method]
    if method == _METHODS["gaussian"] and not sigma > 0:
        raise ValueError(f"Gaussian soft-NMS needs sigma > 0, got {sigma}")
    device = _check_items(items) or torch.device("cpu")
    backend = _resolve_backend(backend, device)
    nv = len(items)
    sizes = torch.tensor([int(it[1].shape[0]) for it in items], dtype=torch.long)
    segs = torch.cat([it[0].reshape(-1, 2).float() for it in items]) if nv else torch.zeros(0, 2)
    scores = torch.cat([it[1].float() for it in items]) if nv else torch.zeros(0)
    labels = torch.cat([it[2].long() for it in items]) if nv else torch.zeros(0, dtype=torch.long)
    segs, scores, labels = segs.to(device), scores.to(device), labels.to(device)
    video = torch.repeat_interleave(torch.arange(nv, device=device), sizes.to(device))

    # groups: (video, class ascending) or video; rows keep their order inside a group
    key = video
    if multiclass and labels.numel():
        uniq, inv = torch.unique(labels, return_inverse=True)
        key = video * uniq.numel() + inv
    order = torch.arange(labels.numel(), device=device)
    if method == _METHODS["hard"]:  # hard NMS wants each group by descending score (stable)
        order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(key[order], stable=True).indices]
    gcounts = torch.unique_consecutive(key[order], return_counts=True)[1]
    offsets = torch.cat([gcounts.new_zeros(1), torch.cumsum(gcounts, 0)])
    args = (segs[order].contiguous(), scores[order].contiguous(), offsets.contiguous(),
            float(iou_threshold), float(min_score), float(sigma), method, int(max_seg_num))
    if backend == "torch":
        keep, out_scores, _ = _nms_groups_torch(*args)
    else:
        cpu = backend == "cpp"
        ext_args = tuple(a.cpu() if cpu and isinstance(a, Tensor) else a for a in args)
        keep, out_scores, _ = (t.to(device) for t in _load_extension().nms_groups(*ext_args))
    slot = keep >= 0
    rows = order[keep[slot]]  # kept rows, group by group, in pick order
    kept_scores = out_scores[slot]
    kept_segs, kept_labels, kept_video = segs[rows], labels[rows], video[rows]

    if not multiclass and voting_thresh > 0:
        bounds = torch.cumsum(sizes, 0).tolist()
        kcounts = torch.bincount(kept_video, minlength=nv).tolist()
        kstart, start = 0, 0
        for v in range(nv):
            if kcounts[v]:
                part = slice(kstart, kstart + kcounts[v])
                kept_segs[part] = seg_voting(kept_segs[part], segs[start:bounds[v]],
                                             scores[start:bounds[v]], voting_thresh)
            kstart, start = kstart + kcounts[v], bounds[v]

    # final: per video, stable sort by descending score, cut to max_seg_num
    final = torch.sort(kept_scores, descending=True, stable=True).indices
    final = final[torch.sort(kept_video[final], stable=True).indices]
    kcounts = torch.bincount(kept_video, minlength=nv)
    if max_seg_num > 0:
        first = torch.cumsum(kcounts, 0) - kcounts
        rank = torch.arange(final.numel(), device=device) - first[kept_video[final]]
        final = final[rank < max_seg_num]
        kcounts = kcounts.clamp(max=max_seg_num)
    split = kcounts.tolist()
    return list(zip(kept_segs[final].split(split), kept_scores[final].split(split),
                    kept_labels[final].split(split)))


def batched_nms(segs: Tensor, scores: Tensor, labels: Tensor, *, method: str,
                iou_threshold: float, sigma: float, min_score: float, max_seg_num: int,
                multiclass: bool, voting_thresh: float, backend: str) -> Detections:
    """NMS of one video's candidates. The keyword arguments are the keys of ``test_cfg.nms``
    (``libs.config.schema.NmsConfig``; ``**dataclasses.asdict(cfg.test_cfg.nms)``).

    Args:
        segs: (N, 2) float segment [start, end] (grid cells or seconds).
        scores: (N,) float scores, finite.
        labels: (N,) integer class ids.
        method: ``'hard'``, ``'linear'`` (soft-NMS, ``w = 1 - iou`` above ``iou_threshold``) or
            ``'gaussian'`` (soft-NMS, ``w = exp(-iou^2 / sigma)``).
        iou_threshold: hard and linear NMS IoU threshold (unused by Gaussian soft-NMS).
        sigma: Gaussian soft-NMS ``w = exp(-iou^2 / sigma)``.
        min_score: hard NMS keeps scores > min_score (if > 0); soft-NMS drops decayed scores
            < min_score (except the first pick).
        max_seg_num: cap per class inside NMS and per video at the end (<= 0: no cap).
        multiclass: NMS per class (classes ascending, no voting) or class-agnostic.
        voting_thresh: class-agnostic only: segment voting IoU threshold (0: off).
        backend: ``'auto'``, ``'cpp'``, ``'cuda'`` or ``'torch'`` (module docstring).

    Returns:
        ``segs (K, 2) float32, scores (K,) float32, labels (K,) int64`` sorted by descending
        score (stable), K <= max_seg_num, on the input device.
    """
    return batched_nms_videos([(segs, scores, labels)], method=method, iou_threshold=iou_threshold,
                              sigma=sigma, min_score=min_score, max_seg_num=max_seg_num,
                              multiclass=multiclass, voting_thresh=voting_thresh,
                              backend=backend)[0]
