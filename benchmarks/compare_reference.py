#!/usr/bin/env python
"""Side-by-side benchmark against the reference implementation (PyPI ``actionformer==1.5.0``).

    python benchmarks/compare_reference.py [--threads 1] [--repeats 2] [--profile] [--quick]
        [--mem-videos 400,1600] [--no-bf16] [--skip train,eval,metric,floor] [--json OUT]
    python benchmarks/compare_reference.py --accuracy [--seeds 1,2,3] [--jobs 2] [--quick]

On first use it installs the reference under ``benchmarks/.ref/site`` (``compare_run.py``: pip
``--no-deps --no-build-isolation --target``, its C++ NMS built against the project's torch; never
into ``.venv``) and writes the synthetic data under ``benchmarks/.ref/data`` (``compare_data.py``:
``tools/make_demo_data.py`` output plus the same features and events in the layout the
reference's ``anet`` dataset class reads; ~5.5 MB per video, ~10 GiB for the default 1,600 + 300).

Speed mode (default): the original TSL config (``compare_data.py``: width 512, batch 16, 192
cells, 4 loader workers; width 128 as well), both sides in fresh processes with the same thread
count, A B A B interleaved, medians:
- training s/iteration in steady state (after warm-up iterations; ``train.py`` and the
  reference's ``train.run`` with their epoch function wrapped to time the iterations), at width
  512 and 128; peak PSS (all processes) and peak RSS (main process); launch -> first batch
  (process start to the first batch handed to the loop) at each ``--mem-videos`` size;
- full validation of ``--valid`` videos with one checkpoint on both sides (trained by us for one
  epoch at width 512, converted to the reference's layout): inference + NMS, then the metric;
- the metric alone on ``--preds`` predictions (ours: ``evaluate_map``; theirs: ``ANETdetection``);
- with ``train.amp`` in the schema, our bf16 training and ``--amp bf16`` evaluation rows
  (against the reference's fp32, which has no mixed precision); ``--profile``: a
  torch.profiler breakdown of a width-512 training iteration per side (``compare_common.py``);
- the fp32 FLOP floor (``compare_floor.py``): the model's FLOPs at this CPU's measured peak rate
  for its kernels, the fastest any implementation of this arithmetic could run a training
  iteration or the validation, and so the best ratio against the reference this CPU allows.
It prints the ratios (reference / ours: > 1 means ours is faster or smaller), then the table.
Measured: 15 minutes with ``--threads 1`` on the shared 2-core development machine; a first run
adds about 1 minute for the install, 3 to 8 for the data and 3 for the evaluation checkpoint
(all kept for later runs). ``--quick``: every step on tiny sizes, a smoke run (a few minutes).

``--accuracy`` (``compare_accuracy.py``): both implementations trained from scratch on the same
data and config for several seeds; mean +- std of the average mAP.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from compare_data import metric_case, make_dataset, ref_checkpoint, write_configs  # noqa: E402
from compare_run import REF, ensure_reference, run_worker  # noqa: E402

FULL = dict(valid=300, preds=150_000, repeats=2, warm512=1, timed512=3, warm128=2, timed128=6,
            min_duration=6.0, max_duration=12.0)
QUICK = dict(valid=16, preds=5_000, repeats=1, warm512=1, timed512=2, warm128=1, timed128=2,
             min_duration=4.0, max_duration=6.0)
GB = 1e9
STEPS = {"train", "eval", "metric", "floor"}    # what --skip can leave out


def has_amp() -> bool:
    from libs.config.schema import TrainConfig
    import dataclasses
    return any(f.name == "amp" for f in dataclasses.fields(TrainConfig))


def native_bf16() -> bool:
    from libs.common.distributed import cpu_has_native_bf16
    return cpu_has_native_bf16()


def med(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.p = QUICK if args.quick else FULL
        self.sizes = [int(x) for x in args.mem_videos.split(",")] if not args.quick else [32]
        self.work = REF / ("work_quick" if args.quick else "work")
        self.results: Dict[str, Dict[str, List[dict]]] = {}
        self.bf16 = has_amp() and not args.no_bf16
        if self.bf16 and not native_bf16():
            self.log("no bf16 rows: this CPU has no native bfloat16 (AVX512-BF16 or AMX); "
                     "emulated bf16 would be many times slower than float32")
            self.bf16 = False
        self.count = 0
        self.check: Dict[str, Tuple[float, int]] = {}

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def run(self, cell: str, variant: str, side: str, job: dict) -> dict:
        self.count += 1
        job = dict(job, name=f"{cell}_{variant}_{self.count}")
        res = run_worker(side, job, self.work / cell, threads=self.args.threads)
        self.results.setdefault(cell, {}).setdefault(variant, []).append(res)
        return res

    # ----------------------------------------------------------------------------- steps
    def data(self) -> None:
        p = self.p
        self.log(f"data: {max(self.sizes)} training + {p['valid']} validation videos")
        self.d = make_dataset(REF / "data" / ("quick" if self.args.quick else "speed"),
                              num_train=max(self.sizes), num_valid=p["valid"], seed=0,
                              min_duration=p["min_duration"], max_duration=p["max_duration"],
                              log=self.log)

    def train_cell(self, width: int, n: int, warm: int, timed: int) -> None:
        cell = f"train{width}_{n}"
        cfg = write_configs(self.d, self.work / cell, num_train=n, width=width, seed=1)
        variants = [("ref", "ref", []), ("ours", "ours", [])]
        if self.bf16 and n == self.sizes[0]:
            variants.append(("ours_bf16", "ours", ["train.amp=bf16"]))
        job = {"kind": "train", "warmup": warm, "limit": warm + timed}
        for _ in range(self.p["repeats"]):
            for variant, side, opts in variants:
                r = self.run(cell, variant, side, dict(job, config=str(cfg[side]), opts=opts))
                self.log(f"  {cell:14s} {variant:9s} {med(r['iter_times']):7.3f} s/it  PSS "
                         f"{r['peak_pss_tree'] / GB:5.2f} GB  RSS {r['peak_rss_main'] / GB:5.2f} GB"
                         f"  first batch {r.get('launch_to_first_batch', float('nan')):5.1f} s")

    def prep_checkpoint(self) -> Tuple[Dict[str, Path], Path, Path]:
        """One epoch of our training at width 512 (no warm-up): the weights both sides evaluate."""
        n = self.sizes[0]
        cfg = write_configs(self.d, self.work / "eval", num_train=n, width=512, seed=1,
                            opt={"epochs": 1, "warmup": False}, name="prep")
        ckpt = self.work / "eval" / "prep_ours_prep" / "epoch_001.pth.tar"
        stamp = self.work / "eval" / "prep_data.json"    # the data the checkpoint was trained on
        want = {"annotations": hashlib.sha256(Path(yaml.safe_load(cfg["ours"].read_text())
                                                   ["dataset"]["json_file"]).read_bytes()).hexdigest()}
        if ckpt.exists() and not (stamp.exists() and json.loads(stamp.read_text()) == want):
            self.log(f"eval checkpoint {ckpt} was trained on other data: training it again")
            shutil.rmtree(ckpt.parent)
        if not ckpt.exists():
            self.log(f"eval checkpoint: one epoch of ours at width 512 on {n} videos ...")
            run_worker("ours", {"kind": "train", "config": str(cfg["ours"]), "name": "prep",
                                "warmup": 0}, self.work / "eval", threads=self.args.threads)
            stamp.write_text(json.dumps(want))
        ref = ref_checkpoint(ckpt, self.work / "eval" / "prep_ref.pth.tar")
        return cfg, ckpt, ref

    def eval_cell(self) -> None:
        cfg, ckpt, ref = self.prep_checkpoint()
        variants = [("ref", "ref", {"ckpt": str(ref)}), ("ours", "ours", {"ckpt": str(ckpt)})]
        if self.bf16:
            variants.append(("ours_bf16", "ours", {"ckpt": str(ckpt), "amp": "bf16"}))
        for _ in range(self.p["repeats"]):
            for variant, side, extra in variants:
                det = self.work / "eval" / f"det_{variant}.npz"
                r = self.run("eval", variant, side, dict(extra, kind="eval", config=str(cfg[side]),
                                                       detections=str(det)))
                self.log(f"  eval {variant:9s} inference+NMS {r['infer']:6.2f} s  metric "
                         f"{r['metric']:6.2f} s  average mAP {100 * r['average_map']:.2f}%")
        self.cross_check()

    def cross_check(self) -> None:
        """Our metric on the reference's detections (same weights, same videos)."""
        import numpy as np
        from libs.datasets.annotations import load_annotations
        from libs.evaluation.events import Predictions, ground_truth_from_records
        from libs.evaluation.metrics import evaluate_map
        import yaml
        ours_cfg = yaml.safe_load((self.work / "eval" / "prep_ours.yaml").read_text())
        recs = load_annotations(ours_cfg["dataset"]["json_file"], "sound_localisation", 12,
                                ["valid"], end_tolerance=1e9).videos
        gt = ground_truth_from_records(recs)
        self.check = {}
        for variant in ("ref", "ours"):
            c = np.load(self.work / "eval" / f"det_{variant}.npz")
            preds = Predictions(c["video_ids"], c["t_start"], c["t_end"], c["labels"], c["scores"])
            self.check[variant] = (evaluate_map(gt, preds, verbose=False).average_map, len(preds))
        self.log(f"  our metric on both sides' detections: reference {100 * self.check['ref'][0]:.2f}% "
                 f"({self.check['ref'][1]} detections), ours {100 * self.check['ours'][0]:.2f}% "
                 f"({self.check['ours'][1]})")

    def metric_cell(self) -> None:
        case = metric_case(self.d, self.p["preds"], 0, self.work / "metric_case.npz")
        import yaml
        ours_cfg = yaml.safe_load((self.work / "eval" / "prep_ours.yaml").read_text())
        ref_cfg = yaml.safe_load((self.work / "eval" / "prep_ref.yaml").read_text())
        for _ in range(self.p["repeats"]):
            for side in ("ref", "ours"):
                ann = (ref_cfg if side == "ref" else ours_cfg)["dataset"]["json_file"]
                r = self.run("metric", side, side, {"kind": "metric", "case": str(case), "ann": ann})
                self.log(f"  metric {side:5s} {r['metric']:8.3f} s  average mAP "
                         f"{100 * r['average_map']:.2f}%")

    def floor_cell(self) -> None:
        cfg = write_configs(self.d, self.work / "floor", num_train=self.sizes[0], width=512, seed=1)
        r = self.run("floor", "ours", "ours", {"kind": "floor", "config": str(cfg["ours"]),
                                               "batch": 16})
        self.log(f"  FLOP floor: training iteration {r['train_floor']:.2f} s, inference "
                 f"{1e3 * r['infer_floor_per_video']:.1f} ms/video (conv {r['rates']['conv']:.0f}, "
                 f"matmul {r['rates']['matmul']:.0f} GFLOP/s)")

    def profile_cell(self) -> None:
        width, n = 512, self.sizes[0]
        cfg = write_configs(self.d, self.work / "profile", num_train=n, width=width, seed=1)
        warm = self.p["warm512"]
        iters = max(2, self.p["timed512"] // 2)
        for side in ("ref", "ours"):
            self.run("profile", side, side, {"kind": "train", "config": str(cfg[side]),
                                             "warmup": warm, "limit": warm + iters,
                                             "profile": True, "profile_iters": iters})


def steps(text: str) -> set:
    """``--skip``'s value: a set of :data:`STEPS` (argparse's exit-2 error otherwise)."""
    chosen = {s for s in text.split(",") if s}
    if chosen - STEPS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected steps among {', '.join(sorted(STEPS))}")
    return chosen


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (both sides)")
    p.add_argument("--repeats", type=int, default=None, help="runs per side and figure (default 2)")
    p.add_argument("--mem-videos", default="400,1600",
                   help="training-set sizes for the memory and start-up rows (the first one also "
                        "for s/iteration and the evaluation checkpoint)")
    p.add_argument("--profile", action="store_true", help="also a torch.profiler breakdown")
    p.add_argument("--skip", type=steps, default=set(), help="comma-separated steps not to run this time: train, "
                   "eval, metric, floor (their rows print '-'; metric reuses eval's config files)")
    p.add_argument("--no-bf16", action="store_true", help="skip our bf16 rows")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--json", default=None, help="also write every measurement to this file")
    p.add_argument("--accuracy", action="store_true",
                   help="train both sides from scratch for several seeds (compare_accuracy.py)")
    p.add_argument("--seeds", default="1,2,3", help="--accuracy: seeds")
    p.add_argument("--jobs", type=int, default=2, help="--accuracy: training runs at a time")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    ensure_reference()
    if args.accuracy:
        from compare_accuracy import run_accuracy
        return run_accuracy(args)
    from compare_report import Report, header
    bench = Bench(args)
    if args.repeats:
        bench.p = dict(bench.p, repeats=args.repeats)
    p = bench.p
    bench.data()
    if "train" not in args.skip:
        bench.log(f"training, width 512 and 128 ({p['repeats']} run(s) per side, interleaved)")
        bench.train_cell(512, bench.sizes[0], p["warm512"], p["timed512"])
        for n in bench.sizes:
            bench.train_cell(128, n, p["warm128"], p["timed128"])
    if "eval" not in args.skip:
        bench.log(f"validation, {p['valid']} videos")
        bench.eval_cell()
    if "metric" not in args.skip:
        bench.log(f"metric alone, {p['preds']:,} predictions")
        bench.metric_cell()
    if "floor" not in args.skip:
        bench.log("fp32 FLOP floor of the width-512 model on this CPU")
        bench.floor_cell()
    if args.profile:
        bench.log("profile, width 512")
        bench.profile_cell()
    report = Report(bench.results, bench.sizes, p["valid"], p["preds"])
    if args.json:
        Path(args.json).write_text(json.dumps({"results": bench.results, "check": bench.check,
                                               "rows": report.rows()}, indent=1))
    print()
    if args.profile:
        print(report.profile() + "\n")
    print(report.ratios() + "\n")
    if report.floor():
        print(report.floor() + "\n")
    print(report.table(header(args.threads, p["repeats"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
