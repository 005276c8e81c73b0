"""Write an evaluation report (figures + report.json + index.html), or compare two reports.

    python tools/make_report.py ANNOTATIONS PREDICTIONS --task T --split S --out DIR
        [--videos ID ...] [--num-videos N] [--pr-tiou 0.5] [--fp-window 10] [--overwrite]
    python tools/make_report.py --compare A B --out DIR [--names NAME_A NAME_B] [--overwrite]

PREDICTIONS is a submission JSON or a folder of raw pre-NMS candidates (``eval.py --save-raw``),
which gets the default NMS (Gaussian soft-NMS per class) first. As in
``tools/score_submission.py``, predictions of videos outside the split are ignored and split
videos without predictions score as "no detections". A and B are report.json files or report
folders. An existing report in DIR is replaced only with --overwrite. How to read the report:
docs/report.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.config.schema import TASKS  # noqa: E402
from libs.datasets.annotations import load_annotations  # noqa: E402
from libs.evaluation.fusion import detections_list, run_nms  # noqa: E402
from libs.evaluation.raw_candidates import load_raw_dir  # noqa: E402
from libs.evaluation.report import compare_reports, write_report  # noqa: E402
from libs.evaluation.report.output import check_report_dir  # noqa: E402
from libs.evaluation.submission import load_submission_with_ids  # noqa: E402

logger = logging.getLogger("make_report")

# Label-id cap used to read a submission's annotations (the class count is then the file's).
_INFER_CAP = 1_000_000


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluation report: timelines, PR curves, per-class "
                                            "AP, error analysis (docs/report.md).")
    p.add_argument("inputs", nargs="*", metavar="ANNOTATIONS PREDICTIONS",
                   help="annotation JSON and a submission JSON or raw candidate folder")
    p.add_argument("--task", choices=TASKS, help="which event list to evaluate")
    p.add_argument("--split", help="split of the annotation file (e.g. valid)")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--videos", nargs="+", default=None, metavar="ID",
                   help="videos to draw timelines of (default: worst and sampled)")
    p.add_argument("--num-videos", type=int, default=4,
                   help="timelines of the N lowest-AP videos and N sampled ones (default 4)")
    p.add_argument("--pr-tiou", type=float, default=0.5, help="tIoU of the PR curves")
    p.add_argument("--fp-window", type=float, default=10,
                   help="error analysis over each class's top FP_WINDOW x G predictions (10)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="compare two reports (report.json files or folders) instead")
    p.add_argument("--names", nargs=2, metavar=("NAME_A", "NAME_B"), default=None,
                   help="model names for --compare (default: the report folders' names)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    args = p.parse_args(argv)
    if args.compare:
        if args.inputs:
            p.error("--compare takes no ANNOTATIONS PREDICTIONS")
    else:
        if len(args.inputs) != 2:
            p.error("expected ANNOTATIONS PREDICTIONS (or --compare A B)")
        if not args.task or not args.split:
            p.error("--task and --split are required to write a report")
    return args


def _nms_settings() -> Any:
    """NMS settings for raw candidates: the config defaults. The only place that knows the
    settings type (``libs.config.schema.NmsConfig``, what ``fusion.run_nms`` takes)."""
    from libs.config.schema import NmsConfig
    return NmsConfig()


def _raw_detections(folder: str, task: str, split: str) -> Tuple[List[Dict[str, Any]], int]:
    """Raw candidate folder -> (per-video detections after NMS, num_classes of its meta)."""
    meta, cands = load_raw_dir(folder)
    for key, want in (("task", task), ("split", split)):
        if str(meta[key]) != want:
            raise UserError(f"raw candidates of {key} '{meta[key]}' ({folder}): expected "
                            f"--{key} {want}")
    kept = run_nms(cands, _nms_settings())
    logger.info("%s: NMS kept %d of %d candidates", folder,
                sum(len(c["scores"]) for c in kept.values()),
                sum(len(c["scores"]) for c in cands.values()))
    return detections_list(kept), int(meta["num_classes"])


def _report(args: argparse.Namespace) -> int:
    ann_path, pred_path = args.inputs
    check_report_dir(args.out, args.overwrite)     # again when writing; fail before loading
    if os.path.isdir(pred_path):
        detections, num_classes = _raw_detections(pred_path, args.task, args.split)
        ann = load_annotations(ann_path, args.task, num_classes, splits=[args.split])
        kind = "raw candidates + NMS"
    else:
        ann = load_annotations(ann_path, args.task, _INFER_CAP, splits=[args.split])
        detections, sub_ids = load_submission_with_ids(pred_path, args.task)
        present = set(sub_ids)
        missing = [v.video_id for v in ann.videos if v.video_id not in present]
        if missing:
            logger.warning("%d of %d video(s) of split '%s' are missing from the submission "
                           "(no detections)", len(missing), len(ann.videos), args.split)
        kind = "submission"
    report = write_report(args.out, ann.videos, detections, ann.label_names, args.task,
                          videos_to_show=args.videos, num_videos=args.num_videos,
                          pr_tiou=args.pr_tiou, fp_window=args.fp_window,
                          overwrite=args.overwrite,
                          meta={"split": args.split, "annotations": ann_path,
                                "predictions": f"{pred_path} ({kind})"})
    for k, v in report["map_per_tiou"].items():
        print(f"tIoU = {k}: mAP = {v * 100:.2f} (%)")
    print(f"Average mAP: {report['average_map'] * 100:.2f} (%)")
    print(f"report: {os.path.join(args.out, 'index.html')}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logger.setLevel(logging.INFO)
    args = _parse(argv)
    t0 = time.perf_counter()
    if args.compare:
        comp = compare_reports(args.compare[0], args.compare[1], args.out, names=args.names,
                               overwrite=args.overwrite)
        (na, nb), (ma, mb) = comp["names"], comp["average_map"]
        print(f"average mAP: {na} {ma * 100:.2f} (%), {nb} {mb * 100:.2f} (%), "
              f"difference {(mb - ma) * 100:+.2f}")
        print(f"comparison: {os.path.join(args.out, 'index.html')}")
        return 0
    code = _report(args)
    logger.info("done in %.1f s", time.perf_counter() - t0)
    return code


if __name__ == "__main__":
    run_cli(main)
