"""Fuse several models' raw candidates (``eval.py --save-raw DIR``) into one submission.

    python tools/fuse_results.py RAW_DIR [RAW_DIR ...] --out SUBMISSION.json [--mode pool|wbf]
        [--weights 1 1] [--method gaussian|linear|hard] [--sigma 0.4] [--min-score 0.001]
        [--max-seg-num 500] [--iou-threshold 0.1] [--wbf-iou 0.55] [--wbf-skip 0.0]
        [--wbf-conf avg|max] [--annotations FILE [--annotations FILE] [--split S]] [--overwrite]

``pool``: all runs' pre-NMS candidates (scores x weight) go through one NMS per video (the
original's post-fusion). ``wbf``: each run goes through the NMS alone, then 1-D weighted box
fusion (``libs/evaluation/fusion.py``). The submission (docs/numerics.md s.10.2) holds every video of the runs (and of
the split, with --annotations). With --annotations, the metric of each run (after its own NMS with
the same settings) and of the fusion is printed and written to ``<out stem>_metrics.json``.
The NMS options are the keys of ``test_cfg.nms`` (same names and defaults, docs/config.md).

Several tasks (raw folders of a unified model: meta ``tasks``, ``task_num_classes``, JOINT labels):
the runs must share the task list and class counts; pooling, NMS and WBF run per task (a task's
candidates never suppress or merge with another's), each task with its own NMS settings: the
options above, overlaid with the run's ``test_cfg.per_task.<task>.nms`` (stored in its meta)
except for the options given on the command line (pool: the first run's overrides). The
submission holds every task's list per video (task-local labels, each cut to its task's
max_seg_num); with --annotations (one file with both lists, or --annotations once per task's
file) the tables are per task, followed by the headline (the mean of the tasks' average mAPs).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.evaluation.challenge import (headline_line, mean_average_map,  # noqa: E402
                                       task_annotation_sets)
from libs.evaluation.fusion import (check_compatible, check_weights, detections_list,  # noqa: E402
                                    fuse_pool_tasks, fuse_wbf_tasks, run_nms_tasks,
                                    task_candidates, task_nms_settings, union_video_ids)
from libs.config import NmsConfig  # noqa: E402
from libs.config.loader import resolve_section  # noqa: E402
from libs.config.schema import NMS_BACKENDS, NMS_METHODS  # noqa: E402
from libs.config.tasks import TaskLayout  # noqa: E402
from libs.evaluation.raw_candidates import load_raw_dir, raw_layout  # noqa: E402
from libs.evaluation.metrics import (DEFAULT_TIOU_THRESHOLDS, MetricResult, evaluate_map)  # noqa: E402
from libs.evaluation.events import (ground_truth_from_records, predictions_from_detections)  # noqa: E402
from libs.evaluation.submission import detections_to_task_submission, write_json  # noqa: E402

logger = logging.getLogger("fuse_results")


# the NMS options: (dest, test_cfg.nms key); given ones override a run's per-task settings
_NMS_OPTIONS = (("method", "method"), ("sigma", "sigma"), ("min_score", "min_score"),
                ("max_seg_num", "max_seg_num"), ("iou_threshold", "iou_threshold"),
                ("voting_thresh", "voting_thresh"), ("backend", "backend"))


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw_dirs", nargs="+", help="raw candidate folders of eval.py --save-raw")
    p.add_argument("--out", required=True, help="submission JSON to write")
    p.add_argument("--mode", choices=("pool", "wbf"), default="pool",
                   help="pool: pooled candidates + one NMS; wbf: weighted segment fusion")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per run (default 1 each)")
    nms = p.add_argument_group("NMS (pool: of the pooled candidates; wbf/metrics: of each run); "
                               "the keys of test_cfg.nms, same defaults; given options also "
                               "replace a run's test_cfg.per_task overrides")
    d = NmsConfig()
    # default None: an option not given takes the test_cfg.nms default (or a per-task override)
    nms.add_argument("--method", choices=NMS_METHODS, default=None, help=_doc("method", d))
    nms.add_argument("--sigma", type=float, default=None, help=_doc("sigma", d))
    nms.add_argument("--min-score", type=float, default=None, help=_doc("min_score", d))
    nms.add_argument("--max-seg-num", type=int, default=None, help=_doc("max_seg_num", d))
    nms.add_argument("--iou-threshold", type=float, default=None,
                     help=_doc("iou_threshold", d))
    nms.add_argument("--class-agnostic", action="store_true",
                     help="one NMS over all classes (test_cfg.nms.multiclass false)")
    nms.add_argument("--voting-thresh", type=float, default=None,
                     help=_doc("voting_thresh", d))
    nms.add_argument("--backend", choices=NMS_BACKENDS, default=None, help=_doc("backend", d))
    wbf = p.add_argument_group("weighted segment fusion")
    wbf.add_argument("--wbf-iou", type=float, default=0.55, help="cluster IoU threshold")
    wbf.add_argument("--wbf-skip", type=float, default=0.0, help="ignore scores below this")
    wbf.add_argument("--wbf-conf", choices=("avg", "max"), default="avg", help="fused score rule")
    p.add_argument("--annotations", action="append", default=None, metavar="FILE",
                   help="annotation JSON: also score the results (several tasks: one file with "
                        "every task's lists, or --annotations once per task's file)")
    p.add_argument("--split", default=None, help="split to score (default: the runs' split)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p.parse_args(argv)


def _doc(name: str, defaults: NmsConfig) -> str:
    doc = next(f.metadata["key"].doc for f in dataclasses.fields(NmsConfig) if f.name == name)
    return f"{doc} (default {getattr(defaults, name)})"


def _settings(args: argparse.Namespace) -> Tuple[Dict[str, Any], List[str]]:
    """The NMS options checked like the config keys they mirror (one error naming the option):
    ``(test_cfg.nms values, keys given on the command line)``."""
    given = {key: getattr(args, dest) for dest, key in _NMS_OPTIONS
             if getattr(args, dest) is not None}
    if args.class_agnostic:
        given["multiclass"] = False
    bad = [f"--{name.replace('_', '-')} {getattr(args, name)}: expected a value in "
           f"{'(0' if name == 'wbf_iou' else '[0'}, 1]"
           for name in ("wbf_iou", "wbf_skip") if not 0.0 <= getattr(args, name) <= 1.0
           or (name == "wbf_iou" and getattr(args, name) == 0)]
    if bad:
        raise UserError(f"bad options (command line): {'; '.join(bad)}")
    base = resolve_section("test_cfg.nms", {**dataclasses.asdict(NmsConfig()), **given},
                           "command line")
    return dataclasses.asdict(base), list(given)


def _score(dets: Mapping[str, Dict[str, Any]], gt: Any, split_ids: List[str], where: str
           ) -> MetricResult:
    return evaluate_map(gt, predictions_from_detections(detections_list(dets, split_ids)),
                        DEFAULT_TIOU_THRESHOLDS, where=where)


def _local(dets: Mapping[str, Dict[str, Any]], layout: TaskLayout, task: str
           ) -> Dict[str, Dict[str, Any]]:
    """One task's detections with task-local labels."""
    offset = layout.class_range(task)[0]
    return {v: dict(c, labels=np.asarray(c["labels"]) - offset)
            for v, c in task_candidates(dets, layout, task).items()}


def _pool_settings(run_settings: List[List[NmsConfig]], layout: TaskLayout,
                   names: List[str]) -> List[NmsConfig]:
    """Pool mode: the first run's per-task settings (a warning names the runs that differ)."""
    for name, settings in zip(names[1:], run_settings[1:]):
        for i, task, _, _ in layout:
            if settings[i] != run_settings[0][i]:
                logger.warning("run %s: NMS settings of '%s' (test_cfg.per_task in its meta) differ "
                               "from run 1's; the pooled candidates use run 1's: %s", name, task,
                               dataclasses.asdict(run_settings[0][i]))
    return run_settings[0]


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = _parse(argv)
    base, given = _settings(args)
    check_weights(args.weights, len(args.raw_dirs))
    metrics_path = str(Path(args.out).with_suffix("")) + "_metrics.json"
    targets = [args.out] + ([metrics_path] if args.annotations else [])
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not args.overwrite:
        raise UserError(f"output file already exists ({existing[0]}): pass --overwrite to replace it")
    if args.split and not args.annotations:
        raise UserError("--split without --annotations (command line): expected both or neither")

    loaded = [load_raw_dir(d) for d in args.raw_dirs]
    metas, runs = [m for m, _ in loaded], [r for _, r in loaded]
    check_compatible(metas, args.raw_dirs)
    layout = raw_layout(metas[0])
    tasks = list(layout.tasks)
    run_settings = [task_nms_settings(base, given, meta, layout, str(Path(d) / "meta.json"))
                    for d, meta in zip(args.raw_dirs, metas)]
    video_ids = union_video_ids(runs, warn=False)   # the fusion warns

    gts: Dict[str, Any] = {}
    split_ids: List[str] = []
    anns: Dict[str, Any] = {}
    split = args.split or str(metas[0]["split"])
    if args.annotations:
        anns = task_annotation_sets(args.annotations, tasks, list(layout.num_classes), [split],
                                    trim=True)
        for task in tasks:
            gts[task] = ground_truth_from_records(anns[task].videos)
            if len(gts[task]) == 0:
                raise UserError(f"no ground-truth events of '{task}' in split '{split}' "
                                f"({', '.join(args.annotations)}): this split cannot be scored")
        split_ids = [v.video_id for v in anns[tasks[0]].videos]
        known = set(split_ids)
        extra = sum(v not in known for v in video_ids)
        missing = [v for v in split_ids if v not in set(video_ids)]
        if extra:
            logger.warning("%d video(s) of the runs are not in split '%s': not scored", extra, split)
        if missing:
            logger.warning("%d of %d video(s) of split '%s' are in no run: written with no "
                           "detections", len(missing), len(split_ids), split)
            video_ids += missing

    if args.mode == "pool":
        fused_settings = _pool_settings(run_settings, layout, list(args.raw_dirs))
        fused = fuse_pool_tasks(runs, layout, fused_settings, args.weights)
        per_run = ([run_nms_tasks(r, layout, s) for r, s in zip(runs, run_settings)]
                   if gts else [])
    else:
        fused_settings = run_settings[0]
        per_run = [run_nms_tasks(r, layout, s) for r, s in zip(runs, run_settings)]
        fused = fuse_wbf_tasks(per_run, layout, weights=args.weights, iou_thr=args.wbf_iou,
                               skip_thr=args.wbf_skip, conf_type=args.wbf_conf,
                               max_seg_num=[s.max_seg_num for s in fused_settings])
    sub = detections_to_task_submission(detections_list(fused), layout, video_ids,
                                        [s.max_seg_num for s in fused_settings])
    write_json(sub, args.out, overwrite=args.overwrite)
    n_det = sum(len(d["scores"]) for d in fused.values())
    print(f"[FUSION] {args.mode} of {len(runs)} run(s): {len(video_ids)} videos, {n_det} "
          f"detections -> {args.out}")
    if gts:
        _report(args, layout, metas, per_run, fused, fused_settings, gts, anns, split, split_ids,
                metrics_path)
    return 0


def _report(args: argparse.Namespace, layout: TaskLayout, metas: List[Dict[str, Any]],
            per_run: List[Dict[str, Any]], fused: Dict[str, Any], settings: List[NmsConfig],
            gts: Dict[str, Any], anns: Dict[str, Any], split: str, split_ids: List[str],
            metrics_path: str) -> None:
    """Print the metric of each run and of the fusion per task (then the headline with several
    tasks) and write them to ``metrics_path``."""
    tasks, multi = list(layout.tasks), layout.multi
    weights = check_weights(args.weights, len(per_run)).tolist()
    report: Dict[str, Any] = {"task": tasks if multi else tasks[0], "split": split,
                              "mode": args.mode, "weights": weights,
                              "nms": ({t: dataclasses.asdict(s) for t, s in zip(tasks, settings)}
                                      if multi else dataclasses.asdict(settings[0])), "runs": []}
    if multi:
        report["tasks"] = tasks
    if args.mode == "wbf":
        report["wbf"] = {"iou_thr": args.wbf_iou, "skip_thr": args.wbf_skip,
                         "conf_type": args.wbf_conf}
    run_results: List[Dict[str, MetricResult]] = []
    for i, (d, meta, dets) in enumerate(zip(args.raw_dirs, metas, per_run)):
        res = {t: _score(_local(dets, layout, t), gts[t], split_ids,
                         f"run {d}" + (f", {t}" if multi else "")) for t in tasks}
        run_results.append(res)
        for t in tasks:
            print(f"[RESULTS] run {i + 1} ({d}, checkpoint {meta.get('checkpoint', '?')})"
                  + (f" {t}" if multi else ""))
            print(res[t].format_table())
        if multi:
            print(f"[RESULTS] run {i + 1}: {headline_line(res)}")
        entry: Dict[str, Any] = {"raw_dir": str(d), "checkpoint": meta.get("checkpoint")}
        if multi:
            entry["metrics"] = {t: res[t].to_dict(anns[t].label_names) for t in tasks}
            entry["average_map"] = mean_average_map(res)
        else:
            entry["metrics"] = res[tasks[0]].to_dict(anns[tasks[0]].label_names)
        report["runs"].append(entry)
    fres = {t: _score(_local(fused, layout, t), gts[t], split_ids,
                      "fusion" + (f", {t}" if multi else "")) for t in tasks}
    for t in tasks:
        print(f"[RESULTS] fusion ({args.mode})" + (f" {t}" if multi else ""))
        print(fres[t].format_table())
    if multi:
        print(f"[RESULTS] fusion ({args.mode}): {headline_line(fres)}")
    averages = [mean_average_map(r) for r in run_results]
    fusion_avg = mean_average_map(fres)
    best = int(np.argmax(averages))
    print(f"[SUMMARY] {'mean ' if multi else ''}average mAP: runs "
          f"{', '.join(f'{a * 100:.2f}' for a in averages)}; fusion {fusion_avg * 100:.2f} "
          f"({(fusion_avg - averages[best]) * 100:+.2f} vs best run {best + 1})")
    if multi:
        report["fusion"] = {t: fres[t].to_dict(anns[t].label_names) for t in tasks}
        report["average_map"] = fusion_avg
    else:
        report["fusion"] = fres[tasks[0]].to_dict(anns[tasks[0]].label_names)
    write_json(report, metrics_path, overwrite=args.overwrite)
    print(f"metrics written to {metrics_path}")


if __name__ == "__main__":
    run_cli(main)
