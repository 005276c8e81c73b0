"""``benchmarks/compare_reference.py --accuracy``: training from scratch, ours against the reference.

Same synthetic data (the first 200 of 400 generated training videos and 100 validation videos of
``tools/make_demo_data.py``, 12 sound classes; ``--quick``: 32 / 16), the original TSL config at
width 128 with 8 + 1 warm-up epochs (108 optimizer steps: the case of issue 16, 400 videos and
12 + 2 epochs, scaled to fit the shared 2-core machine; ``--quick``: 2 + 1), one run per seed
and side (``init_rand_seed``
= the seed on both sides), ``--jobs`` runs at a time with ``--threads`` each. Every model is
evaluated on the validation videos with its raw weights and with its EMA weights; all detections
are scored with the same metric (ours; the reference's own ``ANETdetection`` value is reported
next to it). Prints per-seed average mAP and mean +- std (sample std) per column, and whether
ours' raw-weight mean is within 1 point of the reference's with overlapping mean +- std intervals.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np

from compare_data import make_dataset, write_configs
from compare_run import REF, run_worker

FULL = dict(data=400, train=200, valid=100, epochs=8, warmup_epochs=1, width=128)
QUICK = dict(data=32, train=32, valid=16, epochs=2, warmup_epochs=1, width=128)
COLUMNS = (("ref_raw", "reference, raw weights"), ("ours_raw", "ours, raw weights"),
           ("ours_ema", "ours, default eval (EMA, warm-up)"),
           ("ref_ema", "reference, its default eval (EMA, fixed decay)"))


def _score(det_file: Path, gt) -> float:
    from libs.evaluation.events import Predictions
    from libs.evaluation.metrics import evaluate_map
    c = np.load(det_file)
    preds = Predictions(c["video_ids"], c["t_start"], c["t_end"], c["labels"], c["scores"])
    return float(evaluate_map(gt, preds, verbose=False).average_map)


def run_accuracy(args: argparse.Namespace) -> int:
    from libs.datasets.annotations import load_annotations
    from libs.evaluation.events import ground_truth_from_records
    p = QUICK if args.quick else FULL
    seeds = [int(s) for s in args.seeds.split(",")]
    root = REF / ("acc_quick" if args.quick else "acc")
    data = make_dataset(REF / "data" / ("acc_quick" if args.quick else "acc"), num_train=p["data"],
                        num_valid=p["valid"], seed=0, min_duration=6.0, max_duration=12.0)
    opt = {"epochs": p["epochs"], "warmup_epochs": p["warmup_epochs"]}
    print(f"accuracy: {p['train']} training / {p['valid']} validation videos, width {p['width']}, "
          f"{p['epochs']} + {p['warmup_epochs']} warm-up epochs, seeds {seeds}, {args.jobs} run(s) "
          f"at a time, {args.threads} thread(s) each", flush=True)
    cfgs = {s: write_configs(data, root / f"seed{s}", num_train=p["train"], width=p["width"],
                             seed=s, opt=opt, name=f"acc{s}") for s in seeds}
    epochs = p["epochs"] + p["warmup_epochs"]

    def train(seed: int, side: str) -> Path:
        run_dir = root / f"seed{seed}"
        if side == "ours":
            ckpt = run_dir / f"acc{seed}_ours_train" / f"epoch_{epochs:03d}.pth.tar"
            job = {"kind": "train", "config": str(cfgs[seed]["ours"]), "name": "train",
                   "warmup": 0, "opts": ["train.ckpt_freq=1000"]}
        else:
            ckpt = run_dir / f"acc{seed}_ref_train" / f"epoch_{epochs:03d}.pth.tar"
            job = {"kind": "train", "config": str(cfgs[seed]["ref"]), "name": "train",
                   "warmup": 0, "ckpt_freq": 1000}
        if not ckpt.exists():
            shutil.rmtree(ckpt.parent, ignore_errors=True)   # an unfinished earlier run
            r = run_worker(side, job, run_dir, threads=args.threads, memory=False)
            print(f"  seed {seed} {side:4s} trained in {r['wall']:.0f} s", flush=True)
        return ckpt

    jobs = [(s, side) for s in seeds for side in ("ref", "ours")]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        ckpts = dict(zip(jobs, pool.map(lambda j: train(*j), jobs)))

    gt = ground_truth_from_records(load_annotations(
        str(data["root"] / f"annotations_{p['train']}.json"),
        "sound_localisation", 12, ["valid"], end_tolerance=1e9).videos)
    table: Dict[str, Dict[int, float]] = {k: {} for k, _ in COLUMNS}
    own: Dict[int, float] = {}

    def evaluate(item) -> None:
        s, side, weights = item
        run_dir = root / f"seed{s}"
        det = run_dir / f"det_{side}_{weights}.npz"
        job = {"kind": "eval", "config": str(cfgs[s][side]), "ckpt": str(ckpts[(s, side)]),
               "weights": weights, "detections": str(det), "name": f"{side}_{weights}"}
        r = run_worker(side, job, run_dir, threads=args.threads, memory=False)
        table[f"{side}_{weights}"][s] = _score(det, gt)
        if side == "ref" and weights == "raw":
            own[s] = r["average_map"]

    items = [(s, side, w) for s in seeds for side in ("ours", "ref") for w in ("raw", "ema")]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(evaluate, items))
    for s in seeds:
        print(f"  seed {s}: " + ", ".join(f"{k} {100 * table[k][s]:.2f}%" for k, _ in COLUMNS)
              + f" (reference raw, its own metric: {100 * own[s]:.2f}%)", flush=True)
    print(summary(table, seeds, p, args))
    return 0


def _ms(values: List[float]) -> tuple:
    m = statistics.mean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(table: Dict[str, Dict[int, float]], seeds: List[int], p: dict,
            args: argparse.Namespace) -> str:
    from compare_report import machine
    lines = ["", f"Average mAP (%) on the validation videos, our metric for every column "
                 f"({machine()}; {p['train']} / {p['valid']} videos, width {p['width']}, "
                 f"{p['epochs']} + {p['warmup_epochs']} epochs):", "",
             "| seed | " + " | ".join(name for _, name in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for s in seeds:
        lines.append(f"| {s} | " + " | ".join(f"{100 * table[k][s]:.2f}" for k, _ in COLUMNS) + " |")
    stats = {k: _ms([table[k][s] for s in seeds]) for k, _ in COLUMNS}
    lines.append("| mean +- std | " + " | ".join(
        f"{100 * m:.2f} +- {100 * sd:.2f}" for m, sd in (stats[k] for k, _ in COLUMNS)) + " |")
    (mr, sr), (mo, so) = stats["ref_raw"], stats["ours_raw"]
    overlap = (mo + so >= mr - sr) and (mr + sr >= mo - so)
    ok = mo >= mr - 0.01 and overlap
    lines += ["", f"raw weights: ours - reference = {100 * (mo - mr):+.2f} points; intervals "
                  f"{'overlap' if overlap else 'do not overlap'}; target (ours >= reference - 1 "
                  f"point, overlapping): {'met' if ok else 'NOT met'}"]
    return "\n".join(lines)
