#!/usr/bin/env python
"""Summarise the dataset a config describes: feature files, lengths, durations, events per class.

    python tools/summarize_dataset.py CONFIG [--split train] [--opt KEY=VALUE ...]

The dataset is built exactly as training/eval build it, so every annotation and feature file
problem of the split is reported (one ``error:`` line, exit status 2), except NaN/inf values in
feature files: those are counted per modality (rows and videos) instead of stopping the summary,
with what ``dataset.on_nonfinite`` will do about them.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from libs.config.loader import add_config_args, load_config  # noqa: E402
from libs.common.errors import run_cli  # noqa: E402
from libs.datasets.perception import PerceptionDataset  # noqa: E402


def _range(values: np.ndarray, fmt: str = "{:.0f}") -> str:
    if values.size == 0:
        return "-"
    return " / ".join(fmt.format(v) for v in (values.min(), np.median(values), values.max()))


def summarize(dataset: PerceptionDataset, policy: str = "error") -> List[str]:
    """The summary lines of a built dataset (with ``on_nonfinite: zero`` the non-finite rows are
    counted; ``policy`` is what the user's config does with them)."""
    vids = [v.video_id for v in dataset.videos]
    durations = np.array([v.duration for v in dataset.videos], dtype=np.float64)   # (V,)
    lines = [f"annotation file(s): {dataset.annotation_source}",
             f"task: {' + '.join(dataset.tasks)}   split(s): {', '.join(dataset.splits)}   "
             f"classes: {' + '.join(str(n) for n in dataset.task_num_classes)}",
             f"videos: {len(vids)}   duration s (min / median / max): {_range(durations, '{:.2f}')}",
             "modalities (T = rows per video, min / median / max):"]
    for i, src in enumerate(dataset.sources):
        present = [j for j, v in enumerate(vids) if v not in dataset.zero_filled[i]]
        rows = np.array([src.shape(vids[j])[0] for j in present], dtype=np.float64)  # (V',)
        rate = rows / durations[present] if present else rows
        tag = " primary" if i == dataset.primary else ""
        zeros = f", {len(vids) - len(present)} zero-filled" if len(present) < len(vids) else ""
        lines.append(f"  {src.name}{tag} ({src.ext}, {src.path}): files {len(present)}{zeros}, "
                     f"T {_range(rows)}, dim {src.dim}, rows_per_step {dataset.modalities[i].rows_per_step}, "
                     f"~{np.median(rate) if rate.size else float('nan'):.2f} rows/s")
        bad = dataset.nonfinite[i]
        if bad:
            what = ("stops training and evaluation" if policy == "error" else "replaced by 0")
            lines.append(f"    non-finite values: {sum(bad.values())} rows in {len(bad)} video(s) "
                         f"(e.g. {next(iter(bad))}); dataset.on_nonfinite '{policy}' {what}")
    labels = np.concatenate([v.labels for v in dataset.videos]) if vids else np.zeros(0, np.int64)
    counts = np.bincount(labels, minlength=dataset.num_classes)                   # (K,)
    joint = "; several tasks: ids of the joint label space, task after task"
    lines.append(f"events: {int(counts.sum())} ({' + '.join(dataset.tasks)}"
                 f"{joint if len(dataset.tasks) > 1 else ''})")
    lines.append(f"  {'id':>4}  {'count':>6}  name")
    for cid, n in enumerate(counts):
        lines.append(f"  {cid:>4}  {int(n):>6}  {dataset.label_names.get(cid, '?')}")
    return lines


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config")
    parser.add_argument("--split", action="append", default=None,
                        help="split(s) to summarise (repeatable; default: dataset.train_split)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.opt)
    splits = args.split or list(cfg.dataset.train_split)
    counting = dataclasses.replace(cfg.dataset, on_nonfinite="zero")   # count, do not stop
    dataset = PerceptionDataset(counting, task=cfg.task, seed=cfg.seed, splits=splits,
                                is_training=False)
    dataset.check_values()   # every value now (training and evaluation check at first read)
    print("\n".join(summarize(dataset, cfg.dataset.on_nonfinite)))
    return 0


if __name__ == "__main__":
    run_cli(main)
