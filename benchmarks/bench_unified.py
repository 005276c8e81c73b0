#!/usr/bin/env python
"""The unified (action + sound) demo model against the two separate demo models.

    python benchmarks/bench_unified.py [--seeds 1,2,3] [--threads 1] [--variants all]
        [--epochs N] [--out benchmarks/.unified] [--json FILE] [--custom NAME[@BASE]=KEY=V;KEY=V]
    python benchmarks/bench_unified.py --summarize A.json B.json ...

On the bundled demo data (data/demo/, ``make demo-data``) it trains, per seed, each variant with
``train.py`` (same schedule: the demo configs' 12 + 3 epochs unless ``--epochs``) and scores the
last checkpoint on the valid split with ``eval.py`` (EMA weights):

- ``tsl``: configs/demo_tsl_train.yaml (sound only), ``tal``: configs/demo_tal_train.yaml
  (action only): the two separate models the unified one replaces;
- ``recipe``: configs/demo_unified_train.yaml as it is (width 192, per-task regression heads,
  sound loss weight 0.5);
- ``w128``: the recipe at the single-task demos' width 128 (the recipe until stop 19);
- ``shared``: ``w128`` with ``model.task_heads.regression: shared`` and both task loss weights 1;
- ``per_task``: ``w128`` with both task loss weights 1;
- ``md<p>``: ``shared`` with ``model.modality_dropout: p`` (``--dropout``, default 0.3);
- ``--custom NAME=KEY=V;KEY=V``: the unified config with these overrides (e.g. task weights);
  ``NAME@tal=...`` / ``NAME@tsl=...``: a separate model's config with these overrides (a
  single-task variant: reported like ``tal`` / ``tsl``, not paired).

Prints per variant the mean +- sample std over seeds of each task's average mAP, the median
training wall time of one run (train.py process, seconds), each unified variant's mean paired
difference (seed by seed) to the separate model of each task with its standard error, and the
unified run's time against the two separate runs together (same seeds, the runs interleaved
seed by seed so that machine load hits all variants alike). ``--summarize`` merges the ``--json``
files of several runs (e.g. seeds run in parallel) and prints their summary (a seed seen twice
for a variant counts once: the first file's).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
TASK_OF = {"tsl": ("sound_localisation",), "tal": ("action_localisation",)}
UNIFIED = ("action_localisation", "sound_localisation")


BASE_CONFIG = {"tsl": "configs/demo_tsl_train.yaml", "tal": "configs/demo_tal_train.yaml",
               "unified": "configs/demo_unified_train.yaml"}
CUSTOM: Dict[str, tuple] = {}     # --custom NAME[@BASE]=KEY=V;KEY=V: (config, --opt values)


def variant_args(name: str, dropout: float) -> tuple:
    """(config, extra --opt values) of a variant."""
    if name in CUSTOM:
        return CUSTOM[name]
    if name in ("tsl", "tal"):
        return BASE_CONFIG[name], []
    if name == "recipe":
        return BASE_CONFIG["unified"], []
    if name == "w128":
        return BASE_CONFIG["unified"], ["model.embd_dim=128"]
    opts = ["model.embd_dim=128",
            f"model.task_heads.regression={'per_task' if name == 'per_task' else 'shared'}",
            "train_cfg.task_loss_weight=1.0"]
    if name.startswith("md"):
        opts.append(f"model.modality_dropout={dropout}")
    return BASE_CONFIG["unified"], opts


def add_custom(spec: str) -> str:
    """Registers ``--custom NAME[@tal|@tsl]=KEY=V;KEY=V`` as a variant; returns its name."""
    name, _, values = spec.partition("=")
    name, _, base = name.partition("@")
    if not name or base not in ("", "tal", "tsl"):
        sys.exit(f"--custom {spec}: expected NAME, NAME@tal or NAME@tsl before the first '='")
    CUSTOM[name] = (BASE_CONFIG[base or "unified"], [v for v in values.split(";") if v])
    if base:
        TASK_OF[name] = TASK_OF[base]
    return name


def run(cmd: List[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def one_run(name: str, seed: int, args: argparse.Namespace) -> Dict[str, float]:
    config, opts = variant_args(name, args.dropout)
    out = Path(args.out) / f"{name}_s{seed}"
    if out.exists():
        shutil.rmtree(out)
    opts = opts + [f"seed={seed}", f"output_folder={out.parent}", "train.eval_freq=0"]
    if args.epochs is not None:
        opts.append(f"opt.epochs={args.epochs}")
    run_dir = out.parent / f"{Path(config).stem}_{out.name}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    py = sys.executable
    train_s = run([py, "train.py", config, "--output", out.name, "--device", "cpu", "--threads",
                   str(args.threads), "--opt", *opts], args.threads)
    run([py, "eval.py", config, str(run_dir), "--split", "valid", "--device", "cpu", "--threads",
         str(args.threads), "--no-progress", "--out", str(run_dir / "valid.json"), "--opt",
         *opts], args.threads)
    report = json.loads((run_dir / "valid_metrics.json").read_text())
    if "tasks" in report:
        maps = {t: r["average_map"] for t, r in report["tasks"].items()}
    else:
        maps = {TASK_OF[name][0]: report["average_map"]}
    return {"seed": seed, "train_s": train_s, **maps}


def summary(results: Dict[str, List[Dict[str, float]]]) -> str:
    def ms(xs: List[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{100 * statistics.mean(xs):.2f} +- {100 * sd:.2f}"

    lines = ["| variant | action avg mAP (%) | sound avg mAP (%) | train s (median) |",
             "|---|---|---|---|"]
    for name, runs in results.items():
        cells = []
        for task in UNIFIED:
            vals = [r[task] for r in runs if task in r]
            cells.append(ms(vals) if vals else "-")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | "
                     f"{statistics.median(r['train_s'] for r in runs):.1f} |")
    for name, runs in results.items():
        if name in ("tal", "tsl"):
            continue
        for task, sep in (("action_localisation", "tal"), ("sound_localisation", "tsl")):
            pairs = paired(runs, results.get(sep, []), task)
            if len(pairs) > 1:
                diffs = [u - s for u, s in pairs]
                se = statistics.stdev(diffs) / len(diffs) ** 0.5
                lines.append(f"{name} - {sep} on {task}: {100 * statistics.mean(diffs):+.2f} "
                             f"+- {100 * se:.2f} (mean paired difference +- its standard error, "
                             f"{len(diffs)} seeds)")
    if "tsl" in results and "tal" in results:
        separate = {a["seed"]: a["train_s"] + b["train_s"]
                    for a in results["tsl"] for b in results["tal"] if a["seed"] == b["seed"]}
        for name, runs in results.items():
            if not all(task in runs[0] for task in UNIFIED):     # a single-task variant
                continue
            ratio = [u["train_s"] / separate[u["seed"]] for u in results[name]
                     if u["seed"] in separate]
            if ratio:
                lines.append(f"{name}: one unified run / (TSL run + TAL run) = "
                             f"{statistics.median(ratio):.2f} (median over {len(ratio)} seeds)")
    return "\n".join(lines)


def paired(runs: List[Dict[str, float]], separate: List[Dict[str, float]], task: str) -> list:
    """(unified, separate) values of ``task`` for the seeds both have."""
    by_seed = {r["seed"]: r[task] for r in separate if task in r}
    return [(r[task], by_seed[r["seed"]]) for r in runs if task in r and r["seed"] in by_seed]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default="tsl,tal,recipe,w128")
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / ".unified"))
    p.add_argument("--json", default=None)
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                   help="train nothing: print the summary of earlier --json files together")
    p.add_argument("--custom", action="append", default=[], metavar="NAME=KEY=V;KEY=V",
                   help="an extra variant: the unified config (NAME@tal, NAME@tsl: that "
                        "separate model's) with these --opt values (';'-separated), listed in "
                        "--variants by NAME")
    args = p.parse_args()
    if args.summarize:
        merged: Dict[str, List[Dict[str, float]]] = {}
        for f in args.summarize:
            for name, runs in json.loads(Path(f).read_text()).items():
                if name.startswith("_"):            # notes, e.g. "_variants": what each name ran
                    continue
                have = {r["seed"] for r in merged.get(name, [])}
                merged.setdefault(name, []).extend(r for r in runs if r["seed"] not in have)
        print(summary({k: sorted(v, key=lambda r: r["seed"]) for k, v in merged.items()}))
        return
    for spec in args.custom:
        add_custom(spec)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    names = [f"md{args.dropout:g}" if v == "md" else v for v in args.variants.split(",") if v]
    results: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for seed in seeds:                    # seed by seed: load drifts hit every variant alike
        for name in names:
            r = one_run(name, seed, args)
            results[name].append(r)
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()),
                  flush=True)
    print(summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
