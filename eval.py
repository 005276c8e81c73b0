"""Predict a split with a trained detector, write the challenge submission and score it.

    python eval.py CONFIG CKPT [--split S] [-epoch N] [-t K] [--saveonly] [--out FILE]
                   [--device cpu|cuda] [--amp none|bf16|fp16] [--no-ema] [--overwrite]
                   [--opt KEY=VALUE ...]

Several GPUs: ``torchrun --nproc_per_node N eval.py ...`` splits the videos across the processes
and rank 0 alone writes the (identical) outputs (README: scaling).

CKPT is a checkpoint file or an experiment folder (``-epoch N`` picks ``epoch_NNN.pth.tar``, else
the latest). The model's architecture comes from the checkpoint; CONFIG supplies the data, the
split (``--split``, default ``dataset.val_split``) and the post-processing, so the training YAML
serves for evaluation too. Outputs (next to the checkpoint unless --out):
``<split>_epoch_NNN_results.json`` (the challenge submission) and, unless --saveonly,
``<split>_epoch_NNN_metrics.json``. Existing files are never overwritten silently.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional

from libs.common.checkpoints import find_checkpoint, load_checkpoint
from libs.common.distributed import (add_device_arg, barrier, check_amp, cleanup, init_distributed,
                                     resolve_device)
from libs.common.errors import UserError, run_cli
from libs.common.io import check_output_file, check_output_folder
from libs.common.logs import setup_logging
from libs.common.threads import add_threads_arg, apply_threads
from libs.common.seed import fix_random_seed
from libs.config import add_config_args, load_config
from libs.config.compare import with_architecture_of
from libs.config.tasks import TaskLayout, task_test_cfg
from libs.datasets import PerceptionDataset
from libs.datasets.task_annotations import task_records
from libs.evaluation.ext_scores import apply_ext_scores, check_ext_coverage, load_ext_scores
from libs.evaluation.predict import nms_settings_summary, predict_dataset, score_detections
from libs.evaluation.report import write_report
from libs.evaluation.report.output import check_report_dir
from libs.evaluation.raw_candidates import prepare_raw_dir, raw_candidate_hook, write_raw_meta
from libs.evaluation.submission import detections_to_task_submission, write_json
from libs.evaluation.task_metrics import task_detections
from libs.interop.original_checkpoint import convert_original_checkpoint, is_original_checkpoint
from libs.modeling import Detector
from libs.modeling.detector import checkpoint_config, count_parameters, load_weights
from libs.training.ema import warn_if_ema_immature

log = logging.getLogger("eval")


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config: data, split and post-processing (the training "
                                  "config will do)")
    p.add_argument("ckpt", help="checkpoint file or experiment folder")
    p.add_argument("--split", default=None, help="split(s) to predict, comma-separated (default: "
                                                 "the config's dataset.val_split)")
    p.add_argument("-epoch", "--epoch", type=int, default=None, help="epoch to load from a folder")
    p.add_argument("-t", "--topk", type=int, default=None, help="override test_cfg.max_seg_num")
    p.add_argument("--saveonly", action="store_true", help="write the submission only (no labels needed)")
    p.add_argument("--out", default=None, help="submission file (default: next to the checkpoint)")
    add_device_arg(p)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="mixed precision of the forward pass (default none: fp32; bf16 on CPU or "
                        "GPU, fp16 on CUDA); decoding and NMS stay fp32")
    add_threads_arg(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument("--save-raw", default=None, metavar="DIR",
                   help="also store per-video pre-NMS candidates (seconds) for tools/fuse_results.py")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write the evaluation report (figures, report.json, index.html) to DIR "
                        "(docs/report.md)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    add_config_args(p)
    return p.parse_args(argv)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    setup_logging(None, rank=int(os.environ.get("RANK", "0")))   # torchrun: rank 0 logs INFO
    opts = list(args.opt or [])
    if args.topk is not None:
        if args.topk < 1:
            raise UserError(f"-t/--topk ({args.topk}): expected a positive number of detections")
        opts.append(f"test_cfg.nms.max_seg_num={args.topk}")
    cfg = load_config(args.config, opts)
    apply_threads(args.threads, cfg.loader.num_workers)
    device_name = resolve_device(args.device)
    dist = init_distributed(device_name, cfg.train.dist_timeout)   # one process without torchrun
    device = dist.device
    check_amp(args.amp, device, "--amp")
    fix_random_seed(cfg.seed)
    splits = [x for x in args.split.split(",") if x] if args.split else list(cfg.dataset.val_split)
    if not splits:
        raise UserError(f"--split {args.split!r} (command line): expected a split name, e.g. valid")

    # ---------------------------------------------------------------- checkpoint and outputs
    ckpt_path = find_checkpoint(args.ckpt, args.epoch)
    ckpt = load_checkpoint(ckpt_path)
    epoch = int(ckpt.get("epoch", 0))
    stem = f"{'_'.join(splits)}_epoch_{epoch:03d}"
    results_path = str(ckpt_path.parent / f"{stem}_results.json")
    metrics_path = str(ckpt_path.parent / f"{stem}_metrics.json")
    if args.out:
        results_path = args.out
        metrics_path = str(Path(args.out).with_suffix("")) + "_metrics.json"
    targets = [results_path] + ([] if args.saveonly else [metrics_path])
    existing = [p for p in targets if Path(p).exists()]
    if existing and not args.overwrite:
        raise UserError(f"result file exists ({existing[0]}): pass --overwrite to replace it or --out "
                        f"to write elsewhere")
    if args.report:
        if args.saveonly:
            raise UserError("--report with --saveonly (command line): a report needs ground truth; "
                            "drop one of them")
        several = len(cfg.derived.tasks) > 1     # several tasks: DIR/<task>/ per task
        for task in cfg.derived.tasks:            # before predicting: fail fast
            check_report_dir(str(Path(args.report) / task) if several else args.report,
                             args.overwrite)
    for target in targets:   # every output writable before predicting (a file in the way, EACCES)
        check_output_file(target, "result file")
    if args.save_raw:
        check_output_folder(args.save_raw, "--save-raw folder")
    if args.report:
        check_output_folder(args.report, "--report folder")

    # ---------------------------------------------------------------- model and data
    if is_original_checkpoint(ckpt):   # no config inside: the given config describes the model
        log.info("%s is an original-project checkpoint; converting it in memory", ckpt_path)
        model = Detector.from_config(cfg)
        ckpt = convert_original_checkpoint(ckpt, model, cfg, where=str(ckpt_path))
    else:
        cfg = with_architecture_of(cfg, checkpoint_config(ckpt, ckpt_path), str(ckpt_path))
        model = Detector.from_config(cfg)
    load_weights(model, ckpt, ckpt_path, "raw" if args.no_ema else "ema")
    model.to(device)
    log.info("loaded %s weights of %s (epoch %d), %s parameters", "raw" if args.no_ema else "EMA",
             ckpt_path, epoch, f"{count_parameters(model):,}")
    if not args.no_ema:
        warn_if_ema_immature(ckpt.get("ema"), str(ckpt_path))
    dataset = PerceptionDataset.from_config(cfg, splits, is_training=False)
    if not args.saveonly and not any(v.num_events for v in dataset.videos):
        raise UserError(f"no ground truth in split {'+'.join(splits)} ({dataset.annotation_source}): "
                        f"pass --saveonly to write the submission without scoring it")
    ext_file = cfg.test_cfg.ext_score_file
    ext = load_ext_scores(ext_file, cfg.dataset.num_classes) if ext_file else None
    if ext is not None:  # checked before predicting: a bad file fails fast
        check_ext_coverage(ext, [v.video_id for v in dataset.videos], source=ext_file)
    for task in cfg.derived.tasks:
        log.info("%d videos of split %s; %s%s", len(dataset), "+".join(splits),
                 f"{task}: " if len(cfg.derived.tasks) > 1 else "",
                 nms_settings_summary(task_test_cfg(cfg, task).nms))

    # ---------------------------------------------------------------- predict, write, score
    raw_hook = None
    if args.save_raw:
        if dist.rank == 0:
            prepare_raw_dir(args.save_raw, args.overwrite)
        barrier("preparing the --save-raw folder")
        raw_hook = raw_candidate_hook(args.save_raw)   # each process writes the videos it predicts
    detections = predict_dataset(model, dataset, cfg, device, amp=args.amp, raw_hook=raw_hook,
                                 show_progress=not args.no_progress)
    if detections is None:   # torchrun, rank > 0: rank 0 has the detections and writes everything
        cleanup()
        return 0
    layout = TaskLayout.from_config(cfg)
    if args.save_raw:  # meta last: an interrupted run is caught when the folder is loaded
        write_raw_meta(args.save_raw, {
            "split": "+".join(splits), "checkpoint": str(ckpt_path), "epoch": epoch,
            "test_cfg": cfg.to_dict()["test_cfg"],
            "video_ids": [d["video_id"] for d in detections]}, layout)
        log.info("pre-NMS candidates: %s", args.save_raw)
    if ext is not None:
        detections = apply_ext_scores(detections, ext, cfg.test_cfg.ext_score_topk,
                                      cfg.test_cfg.ext_score_num_pred)
        log.info("combined detections with external class scores from %s", ext_file)
    submission = detections_to_task_submission(
        detections, layout, [v.video_id for v in dataset.videos],
        [task_test_cfg(cfg, t).nms.max_seg_num for t in layout.tasks])
    write_json(submission, results_path, overwrite=args.overwrite)
    log.info("submission: %s (%d videos, detections: %s)", results_path, len(submission),
             ", ".join(f"{t} {sum(len(v[t]) for v in submission.values())}" for t in layout.tasks))
    if args.saveonly:
        cleanup()
        return 0
    metrics = score_detections(detections, dataset)
    print(metrics.format_table())
    report = (metrics.to_dict(dataset.task_label_names) if layout.multi
              else metrics.to_dict(dataset.label_names))
    report.update({"checkpoint": str(ckpt_path), "epoch": epoch, "split": splits,
                   "weights": "raw" if args.no_ema else "ema", "amp": args.amp,
                   "task": list(layout.tasks) if layout.multi else cfg.task})
    write_json(report, metrics_path, overwrite=args.overwrite)
    log.info("metrics: %s", metrics_path)
    if args.report:
        meta = {"checkpoint": str(ckpt_path), "epoch": epoch, "split": "+".join(splits)}
        for task in layout.tasks:   # several tasks: one report per task, in DIR/<task>/
            out = Path(args.report) / task if layout.multi else Path(args.report)
            records = task_records(dataset.videos, layout, task)
            dets = task_detections(detections, layout, task, [v.video_id for v in records])
            write_report(str(out), records, dets, dataset.task_label_names[task], task,
                         overwrite=args.overwrite, meta=meta)
            log.info("report: %s", out / "index.html")
    cleanup()
    return 0


if __name__ == "__main__":
    run_cli(main)
