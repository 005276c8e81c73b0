"""Fuse several models' raw candidates (``eval.py --save-raw DIR``) into one submission.

    python tools/fuse_results.py RAW_DIR [RAW_DIR ...] --out SUBMISSION.json [--mode pool|wbf]
        [--weights 1 1] [--method gaussian|linear|hard] [--sigma 0.4] [--min-score 0.001]
        [--max-seg-num 500] [--iou-threshold 0.1] [--wbf-iou 0.55] [--wbf-skip 0.0]
        [--wbf-conf avg|max] [--annotations FILE [--split S]] [--overwrite]

``pool``: all runs' pre-NMS candidates (scores x weight) go through one NMS per video (the
original's post-fusion). ``wbf``: each run goes through the NMS alone, then 1-D weighted box
fusion (``libs/evaluation/fusion.py``). The submission (docs/numerics.md s.10.2) holds every video of the runs (and of
the split, with --annotations). With --annotations, the metric of each run (after its own NMS with
the same settings) and of the fusion is printed and written to ``<out stem>_metrics.json``.
The NMS options are the keys of ``test_cfg.nms`` (same names and defaults, docs/config.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.datasets.annotations import load_annotations  # noqa: E402
from libs.evaluation.fusion import (check_compatible, check_weights, detections_list,  # noqa: E402
                               fuse_pool, run_nms, union_video_ids, weighted_segment_fusion)
from libs.config import NmsConfig  # noqa: E402
from libs.config.loader import resolve_section  # noqa: E402
from libs.config.schema import NMS_BACKENDS, NMS_METHODS  # noqa: E402
from libs.evaluation.raw_candidates import load_raw_dir  # noqa: E402
from libs.evaluation.metrics import (DEFAULT_TIOU_THRESHOLDS, MetricResult, evaluate_map)  # noqa: E402
from libs.evaluation.events import (ground_truth_from_records, predictions_from_detections)  # noqa: E402
from libs.evaluation.submission import detections_to_submission, write_json  # noqa: E402

logger = logging.getLogger("fuse_results")


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw_dirs", nargs="+", help="raw candidate folders of eval.py --save-raw")
    p.add_argument("--out", required=True, help="submission JSON to write")
    p.add_argument("--mode", choices=("pool", "wbf"), default="pool",
                   help="pool: pooled candidates + one NMS; wbf: weighted segment fusion")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per run (default 1 each)")
    nms = p.add_argument_group("NMS (pool: of the pooled candidates; wbf/metrics: of each run); "
                               "the keys of test_cfg.nms, same defaults")
    d = NmsConfig()
    nms.add_argument("--method", choices=NMS_METHODS, default=d.method, help=_doc("method"))
    nms.add_argument("--sigma", type=float, default=d.sigma, help=_doc("sigma"))
    nms.add_argument("--min-score", type=float, default=d.min_score, help=_doc("min_score"))
    nms.add_argument("--max-seg-num", type=int, default=d.max_seg_num, help=_doc("max_seg_num"))
    nms.add_argument("--iou-threshold", type=float, default=d.iou_threshold,
                     help=_doc("iou_threshold"))
    nms.add_argument("--class-agnostic", action="store_true",
                     help="one NMS over all classes (test_cfg.nms.multiclass false)")
    nms.add_argument("--voting-thresh", type=float, default=d.voting_thresh,
                     help=_doc("voting_thresh"))
    nms.add_argument("--backend", choices=NMS_BACKENDS, default=d.backend, help=_doc("backend"))
    wbf = p.add_argument_group("weighted segment fusion")
    wbf.add_argument("--wbf-iou", type=float, default=0.55, help="cluster IoU threshold")
    wbf.add_argument("--wbf-skip", type=float, default=0.0, help="ignore scores below this")
    wbf.add_argument("--wbf-conf", choices=("avg", "max"), default="avg", help="fused score rule")
    p.add_argument("--annotations", default=None, help="annotation JSON: also score the results")
    p.add_argument("--split", default=None, help="split to score (default: the runs' split)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p.parse_args(argv)


def _doc(name: str) -> str:
    return next(f.metadata["key"].doc for f in dataclasses.fields(NmsConfig) if f.name == name)


def _settings(args: argparse.Namespace) -> NmsConfig:
    """The NMS options checked like the config keys they mirror (one error naming the option)."""
    raw = {"method": args.method, "sigma": args.sigma, "min_score": args.min_score,
           "max_seg_num": args.max_seg_num, "iou_threshold": args.iou_threshold,
           "multiclass": not args.class_agnostic, "voting_thresh": args.voting_thresh,
           "backend": args.backend}
    bad = [f"--{name.replace('_', '-')} {getattr(args, name)}: expected a value in "
           f"{'(0' if name == 'wbf_iou' else '[0'}, 1]"
           for name in ("wbf_iou", "wbf_skip") if not 0.0 <= getattr(args, name) <= 1.0
           or (name == "wbf_iou" and getattr(args, name) == 0)]
    if bad:
        raise UserError(f"bad options (command line): {'; '.join(bad)}")
    return resolve_section("test_cfg.nms", raw, "command line")


def _score(dets: Mapping[str, Dict[str, Any]], gt: Any, split_ids: List[str], where: str
           ) -> MetricResult:
    return evaluate_map(gt, predictions_from_detections(detections_list(dets, split_ids)),
                        DEFAULT_TIOU_THRESHOLDS, where=where)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = _parse(argv)
    settings = _settings(args)
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
    task, num_classes = metas[0]["task"], int(metas[0]["num_classes"])
    video_ids = union_video_ids(runs, warn=False)   # the fusion warns

    gt, split_ids, ann = None, [], None
    split = args.split or str(metas[0]["split"])
    if args.annotations:
        ann = load_annotations(args.annotations, task, num_classes, splits=[split])
        gt = ground_truth_from_records(ann.videos)
        if len(gt) == 0:
            raise UserError(f"no ground-truth events of '{task}' in split '{split}' "
                            f"({args.annotations}): this split cannot be scored")
        split_ids = [v.video_id for v in ann.videos]
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
        fused = fuse_pool(runs, settings, args.weights)
        per_run = [run_nms(r, settings) for r in runs] if gt is not None else []
    else:
        per_run = [run_nms(r, settings) for r in runs]
        fused = weighted_segment_fusion(per_run, args.weights, args.wbf_iou, args.wbf_skip,
                                        args.wbf_conf, settings.max_seg_num)
    sub = detections_to_submission(detections_list(fused), task, video_ids, settings.max_seg_num)
    write_json(sub, args.out, overwrite=args.overwrite)
    n_det = sum(len(d["scores"]) for d in fused.values())
    print(f"[FUSION] {args.mode} of {len(runs)} run(s): {len(video_ids)} videos, {n_det} "
          f"detections -> {args.out}")

    if gt is not None:
        report: Dict[str, Any] = {"task": task, "split": split,
                                  "mode": args.mode, "weights": check_weights(args.weights, len(runs)).tolist(),
                                  "nms": dataclasses.asdict(settings), "runs": []}
        if args.mode == "wbf":
            report["wbf"] = {"iou_thr": args.wbf_iou, "skip_thr": args.wbf_skip,
                             "conf_type": args.wbf_conf}
        averages = []
        for i, (d, meta, dets) in enumerate(zip(args.raw_dirs, metas, per_run)):
            res = _score(dets, gt, split_ids, f"run {d}")
            averages.append(res.average_map)
            print(f"[RESULTS] run {i + 1} ({d}, checkpoint {meta.get('checkpoint', '?')})")
            print(res.format_table())
            report["runs"].append({"raw_dir": str(d), "checkpoint": meta.get("checkpoint"),
                                   "metrics": res.to_dict(ann.label_names)})
        res = _score(fused, gt, split_ids, "fusion")
        print(f"[RESULTS] fusion ({args.mode})")
        print(res.format_table())
        best = int(np.argmax(averages))
        print(f"[SUMMARY] average mAP: runs {', '.join(f'{a * 100:.2f}' for a in averages)}; "
              f"fusion {res.average_map * 100:.2f} ({(res.average_map - averages[best]) * 100:+.2f} "
              f"vs best run {best + 1})")
        report["fusion"] = res.to_dict(ann.label_names)
        write_json(report, metrics_path, overwrite=args.overwrite)
        print(f"metrics written to {metrics_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
