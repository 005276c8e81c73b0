"""Time the NMS backends on a full-split-sized synthetic input and print a table.

    python benchmarks/bench_nms.py            # 1000 videos x ~5000 candidates, 12 classes
    python benchmarks/bench_nms.py --quick    # 50 videos x ~2000 candidates
    python benchmarks/bench_nms.py --classes 63 --backends cpp cuda

Candidates mimic decoded detections: clusters of overlapping segments around a few events per
video, mostly low scores (> pre_nms_thresh 0.001), skewed class frequencies. Gaussian soft-NMS,
sigma 0.4, min_score 0.001, max_seg_num 500, per class (the configs' setting). The torch
fallback is slow, so it runs on the first ``--torch-videos`` videos and its rate is extrapolated
(marked ``*``). Each compiled backend processes the whole split in ``--batch``-video calls of
``batched_nms_videos`` (one CUDA launch per call).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.ops.nms import batched_nms_videos, built_backends  # noqa: E402


def make_split(num_videos: int, num_cands: int, num_classes: int, seed: int = 0):
    """List of (segs (N, 2) grid cells, scores (N,), labels (N,)) on CPU."""
    rng = np.random.default_rng(seed)
    cls_p = 1.0 / np.arange(1, num_classes + 1)
    cls_p /= cls_p.sum()
    items = []
    for _ in range(num_videos):
        n = int(rng.integers(num_cands // 2, num_cands * 3 // 2))
        length = 2304.0
        events = rng.uniform(0, length, int(rng.integers(3, 20)))
        centre = events[rng.integers(0, events.size, n)] + rng.normal(0, 8, n)
        dur = np.exp(rng.normal(2.0, 1.0, n)).clip(0.1, 300)
        segs = np.stack([centre - dur / 2, centre + dur / 2], 1).clip(0, length)
        scores = np.minimum(rng.exponential(0.03, n) + 0.001, 1.0)
        labels = rng.choice(num_classes, n, p=cls_p)
        items.append((torch.tensor(segs, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32),
                      torch.tensor(labels, dtype=torch.long)))
    return items


def run(items, backend: str, batch: int, params: dict) -> tuple[float, list]:
    device = "cuda" if backend == "cuda" else "cpu"
    items = [tuple(t.to(device) for t in it) for it in items]
    if device == "cuda":  # warm-up (context, allocator), not timed
        batched_nms_videos(items[:2], **params, backend=backend)
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = []
    for k in range(0, len(items), batch):
        out += batched_nms_videos(items[k:k + batch], **params, backend=backend)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, [[t.cpu() for t in o] for o in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (50 videos x ~2000 candidates)")
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--cands", type=int, default=5000, help="mean candidates per video")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--batch", type=int, default=1000, help="videos per batched_nms_videos call")
    ap.add_argument("--torch-videos", type=int, default=5, help="videos timed for 'torch'")
    ap.add_argument("--backends", nargs="+", default=None, help="default: all built")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.cands, args.torch_videos = 50, 2000, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends or list(built_backends())
    params = dict(iou_threshold=0.1, min_score=0.001, max_seg_num=500, use_soft_nms=True,
                  multiclass=True, sigma=0.4, voting_thresh=0.0)
    items = make_split(args.videos, args.cands, args.classes)
    ncand = sum(int(it[1].numel()) for it in items)
    rows, results = [], {}
    for b in backends:
        sub = items[:args.torch_videos] if b == "torch" else items
        secs, out = run(sub, b, args.batch, params)
        results[b] = out
        rate = len(sub) / secs
        total = secs * len(items) / len(sub)
        rows.append((b, len(sub), total, rate, "*" if len(sub) < len(items) else ""))
    # sanity: how many videos come out the same (labels equal, scores within 1e-5) as the first
    # backend; float rounding (expf) may rarely reorder near-equal scores or move the cut
    names, agree = list(results), []
    for b in names[1:]:
        same = sum(len(x[2]) == len(y[2]) and torch.equal(x[2], y[2])
                   and torch.allclose(x[1], y[1], atol=1e-5, rtol=0)
                   for x, y in zip(results[names[0]], results[b]))
        agree.append(f"{b} {same}/{len(results[b])}")
    dev = torch.cuda.get_device_name(0) if "cuda" in backends else "cpu"
    print(f"\nNMS benchmark: {args.videos} videos, {ncand} candidates, {args.classes} classes, "
          f"Gaussian soft-NMS sigma 0.4, max_seg_num 500; torch threads {torch.get_num_threads()}; "
          f"device {dev}")
    if agree:
        print(f"videos identical to {names[0]}: " + ", ".join(agree))
    print(f"{'backend':8s} {'videos run':>10s} {'total s':>10s} {'videos/s':>10s}")
    for b, n, total, rate, mark in rows:
        print(f"{b:8s} {n:10d} {total:9.2f}{mark or ' '} {rate:10.1f}")
    if any(r[4] for r in rows):
        print("* extrapolated from the videos run")


if __name__ == "__main__":
    main()
