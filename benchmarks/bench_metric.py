"""Time the mAP metric (``libs.evaluation.metrics.evaluate_map``) on a split-sized synthetic input.

    python benchmarks/bench_metric.py                 # 200 videos, 1500 events, 20000 predictions
    python benchmarks/bench_metric.py --videos 2000 --events 15000 --preds 500000 --classes 63

Events: uniform starts in [0, 50) s, lengths 0.5-10 s, uniform classes. Predictions: jittered
copies of random events (start and end +- N(0, 1) s), 80 % with the event's class, random scores.
Prints the best of ``--repeat`` runs for the challenge thresholds (0.1:0.5) and for the report's
fine grid (0.05:0.95), and the average mAP as a sanity check. The metric took ~40 ms for the
default size on one CPU core when this benchmark was written; it should stay well under 1 s.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.evaluation.metrics import DEFAULT_TIOU_THRESHOLDS, evaluate_map  # noqa: E402
from libs.evaluation.events import GroundTruth, Predictions  # noqa: E402


def make_case(n_videos: int, n_events: int, n_preds: int, n_classes: int, seed: int = 0):
    """(GroundTruth, Predictions) as described in the module docstring."""
    rng = np.random.default_rng(seed)
    ev_video = rng.integers(n_videos, size=n_events)
    ev_start = rng.uniform(0, 50, n_events)
    gt = GroundTruth(ev_video.astype(str), ev_start, ev_start + rng.uniform(0.5, 10, n_events),
                     rng.integers(n_classes, size=n_events))
    src = rng.integers(n_events, size=n_preds)
    start = ev_start[src] + rng.normal(0, 1, n_preds)
    end = np.maximum(start + 0.1, gt.t_end[src] + rng.normal(0, 1, n_preds))
    labels = np.where(rng.random(n_preds) < 0.8, gt.labels[src],
                      rng.integers(n_classes, size=n_preds))
    return gt, Predictions(ev_video[src].astype(str), start, end, labels, rng.random(n_preds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--events", type=int, default=1500)
    p.add_argument("--preds", type=int, default=20000)
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    gt, preds = make_case(args.videos, args.events, args.preds, args.classes)
    grids = {"challenge 0.1:0.5 (5)": DEFAULT_TIOU_THRESHOLDS,
             "fine 0.05:0.95 (19)": tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))}
    print(f"{args.videos} videos, {args.events} events, {args.preds} predictions, "
          f"{args.classes} classes")
    for name, thr in grids.items():
        best, result = float("inf"), None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = evaluate_map(gt, preds, thr)
            best = min(best, time.perf_counter() - t0)
        print(f"  {name:24s} {best * 1000:8.1f} ms   average mAP {result.average_map * 100:6.2f} %")


if __name__ == "__main__":
    main()
