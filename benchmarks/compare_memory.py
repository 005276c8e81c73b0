#!/usr/bin/env python
"""Memory and start-up rows of ``benchmarks/compare_reference.py`` at steady state, for several
training-set sizes: each run trains one full epoch plus a few iterations (so that our feature
cache, filled at each video's first read, is as full as it gets), the reference and ours in
fresh processes, A B A B interleaved, medians.

    python benchmarks/compare_memory.py [--mem-videos 100,400,1600,6400] [--distinct-videos 1600]
        [--repeats 2] [--threads 1] [--launch-only]
        [--variant 'float16:dataset.cache_dtype=float16' ...] [--json OUT]

Same data, config (the original TSL config at width 128, batch 16, 192 cells, 4 loader workers)
and measurement (``compare_run.run_worker``: peak RSS of the main process, peak PSS summed over
the process and its loader workers, sampled every 0.5 s; launch -> first batch) as the speed
benchmark, whose short timed runs read only the first ~10 batches. ``--variant NAME:KEY=V;...``
adds a run of ours with ``--opt`` overrides (e.g. ``nocache:dataset.cache=false``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from compare_data import write_configs  # noqa: E402
from compare_reference import Bench, parse_args as speed_args  # noqa: E402
from compare_report import GB, header  # noqa: E402

EXTRA_ITERS = 4                    # iterations of epoch 2 (read from the filled cache)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mem-videos", default="100,400,1600,6400", help="training-set sizes")
    p.add_argument("--distinct-videos", type=int, default=1600,
                   help="distinct training videos generated; larger sizes add hard-linked copies "
                        "of them (compare_data.replicate: no disk space, same memory behaviour)")
    p.add_argument("--repeats", type=int, default=2, help="runs per side and size")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME:KEY=VALUE;KEY=VALUE: one more run of ours with these --opt overrides")
    p.add_argument("--launch-only", action="store_true",
                   help="runs stop after 2 iterations: launch -> first batch only (memory rows "
                        "are then not at steady state)")
    p.add_argument("--json", default=None, help="also write every measurement to this file")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    sizes = [int(x) for x in args.mem_videos.split(",") if x]
    distinct = ",".join(str(min(n, args.distinct_videos)) for n in sizes)
    bench = Bench(speed_args(["--mem-videos", distinct, "--threads", str(args.threads),
                              "--no-bf16"]))
    bench.data()                         # min(n, --distinct-videos) distinct videos
    bench.sizes = sizes
    variants = [("ref", "ref", []), ("ours", "ours", [])]
    for spec in args.variant:
        name, _, opts = spec.partition(":")
        variants.append((f"ours_{name}", "ours", [o for o in opts.split(";") if o]))
    rows = []
    for _ in range(args.repeats):
        for n in bench.sizes:
            cell = f"memory128_{n}"
            cfg = write_configs(bench.d, bench.work / cell, num_train=n, width=128, seed=1)
            limit = 2 if args.launch_only else n // 16 + EXTRA_ITERS   # an epoch + a few more
            for variant, side, opts in variants:
                r = bench.run(cell, variant, side, {"kind": "train", "warmup": 1, "limit": limit,
                                                    "config": str(cfg[side]), "opts": opts})
                row = {"videos": n, "variant": variant, "peak_rss_main": r["peak_rss_main"],
                       "peak_pss_tree": r["peak_pss_tree"],
                       "launch_to_first_batch": r.get("launch_to_first_batch"),
                       "cache": r.get("cache"), "s_it": statistics.median(r["iter_times"])}
                rows.append(row)
                bench.log(f"  {n:5d} videos {variant:14s} RSS main {row['peak_rss_main'] / GB:5.2f} GB"
                          f"  PSS {row['peak_pss_tree'] / GB:5.2f} GB  first batch "
                          f"{row['launch_to_first_batch'] or float('nan'):5.2f} s  "
                          f"{row['s_it']:.3f} s/it  {row['cache'] or ''}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    print(header(args.threads, args.repeats, "; 2 iterations per run (launch only)" if args.launch_only
                 else "; one epoch + 4 iterations per run"))
    print()
    print("| videos | figure | " + " | ".join(v for v, _, _ in variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for n in bench.sizes:
        for key, what, scale in (("peak_rss_main", "peak RSS, main process (GB)", GB),
                                 ("peak_pss_tree", "peak PSS, all processes (GB)", GB),
                                 ("launch_to_first_batch", "launch -> first batch (s)", 1.0)):
            vals = []
            for v, _, _ in variants:
                got = [r[key] for r in rows if r["videos"] == n and r["variant"] == v and r[key]]
                vals.append(f"{statistics.median(got) / scale:.2f}" if got else "-")
            print(f"| {n:,} | {what} | " + " | ".join(vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
