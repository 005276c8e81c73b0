"""One measurement of this project, run by ``benchmarks/compare_reference.py`` as
``python THIS JOB.json`` (the counterpart of ``compare_ref_worker.py``).

Jobs (``kind``):
- ``train``: ``train.py``'s ``main`` on the original-layout config (``--opt`` extras such as
  ``train.amp=bf16``), with ``train_one_epoch`` wrapped to time iterations (``limit`` set: stop
  after that many; unset: train to the end, for ``--accuracy``); the training set's
  ``feature cache: ...`` log line and its size are kept (``cache``, ``cache_bytes``).
- ``eval``: what ``eval.py`` does for the metric (model from the checkpoint, the config's
  validation split, ``predict_dataset``, ``score_detections``); inference + NMS (dataset
  construction included) and the metric timed apart; detections saved for the caller.
- ``metric``: ``evaluate_map`` alone on saved prediction columns (median of 3).
- ``floor``: the fp32 FLOP floor of the config's model on this CPU (``compare_floor.py``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from compare_common import (Breakdown, StopRun, TimedLoader, iteration_times,  # noqa: E402
                            peak_rss_self, profile_hooks, write_result)


class CacheLine(logging.Handler):
    """Keeps the training set's ``feature cache: ...`` log line (the first one: the training
    split's; validation builds its own) and its size in bytes."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.line, self.nbytes = None, None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.line is None and msg.startswith("feature cache: "):
            self.line = msg
            mib = re.search(r", ([0-9.]+) MiB of ", msg)
            self.nbytes = float(mib.group(1)) * 2 ** 20 if mib else None


def train(job: dict) -> dict:
    import train as train_cli
    import libs.training.loop as loop
    from libs.training.ema import ModelEma
    original = train_cli.train_one_epoch
    stamps: list = []
    state: dict = {}
    prof: dict = {}
    cache = CacheLine()
    logging.getLogger("libs.datasets").addHandler(cache)

    def timed_epoch(model, loader, *args, **kwargs):
        if "hooks" not in state:   # once per run (an epoch can be shorter than the measurement)
            state["hooks"] = {}
            if job.get("profile"):
                wrap = [(loop, "compute_losses", "losses + targets"), (ModelEma, "update", "EMA")]
                state["hooks"] = profile_hooks(lambda: Breakdown(model, wrap), job["warmup"],
                                               job["profile_iters"], stamps, prof)
        timed = TimedLoader(loader, stamps, job.get("limit"), state["hooks"], state)
        return original(model, timed, *args, **kwargs)

    train_cli.train_one_epoch = timed_epoch
    argv = [job["config"], "--output", job["name"], "--device", "cpu", "--no-progress",
            "--threads", str(job["threads"])]
    if job.get("opts"):
        argv += ["--opt", *job["opts"]]
    try:
        train_cli.main(argv)
    except StopRun:
        pass
    return {"iter_times": iteration_times(stamps, job["warmup"]), "profile": prof,
            "first_batch_time": state.get("first_batch_time"), "cache": cache.line,
            "cache_bytes": cache.nbytes}


def evaluate(job: dict) -> dict:
    import inspect

    from libs.common.checkpoints import load_checkpoint
    from libs.config import load_config
    from libs.config.compare import with_architecture_of
    from libs.datasets import PerceptionDataset
    from libs.evaluation.predict import predict_dataset, score_detections
    from libs.modeling import Detector
    from libs.modeling.detector import checkpoint_config, load_weights
    ckpt = load_checkpoint(job["ckpt"])
    cfg = with_architecture_of(load_config(job["config"], job.get("opts", [])),
                               checkpoint_config(ckpt, job["ckpt"]), job["ckpt"])
    model = Detector.from_config(cfg)
    load_weights(model, ckpt, job["ckpt"], job.get("weights", "ema"))
    device = torch.device("cpu")
    extra = {}
    if "amp" in inspect.signature(predict_dataset).parameters:
        extra["amp"] = job.get("amp", "none")
    elif job.get("amp", "none") != "none":
        raise SystemExit("predict_dataset has no amp argument")
    t0 = time.perf_counter()
    dataset = PerceptionDataset.from_config(cfg, cfg.dataset.val_split, is_training=False)
    detections = predict_dataset(model, dataset, cfg, device, show_progress=False, **extra)
    t1 = time.perf_counter()
    metrics = score_detections(detections, dataset)
    t2 = time.perf_counter()
    cols = {k: [] for k in ("video_ids", "t_start", "t_end", "labels", "scores")}
    for d in detections:
        n = len(d["scores"])
        cols["video_ids"] += [d["video_id"]] * n
        cols["t_start"].append(d["segments"][:, 0].numpy())
        cols["t_end"].append(d["segments"][:, 1].numpy())
        cols["labels"].append(d["labels"].numpy())
        cols["scores"].append(d["scores"].numpy())
    np.savez(job["detections"], video_ids=np.asarray(cols["video_ids"]).astype(str),
             **{k: np.concatenate(v) for k, v in cols.items() if k != "video_ids"})
    return {"infer": t1 - t0, "metric": t2 - t1, "average_map": float(metrics.average_map),
            "videos": len(dataset)}


def metric(job: dict) -> dict:
    from libs.datasets.annotations import load_annotations
    from libs.evaluation.events import Predictions, ground_truth_from_records
    from libs.evaluation.metrics import evaluate_map
    case = np.load(job["case"])
    ann = load_annotations(job["ann"], "sound_localisation", 12, ["valid"], end_tolerance=1e9)
    gt = ground_truth_from_records(ann.videos)
    preds = Predictions(case["video_ids"], case["t_start"], case["t_end"], case["labels"],
                        case["scores"])
    times, result = [], None
    for _ in range(3):
        t = time.perf_counter()
        result = evaluate_map(gt, preds, verbose=False)
        times.append(time.perf_counter() - t)
    return {"metric": statistics.median(times), "average_map": float(result.average_map)}


def floor(job: dict) -> dict:
    from compare_floor import floor_job
    from libs.config import load_config
    return floor_job(load_config(job["config"]), int(job["batch"]))


def main() -> None:
    job = json.load(open(sys.argv[1]))
    torch.set_num_threads(job["threads"])
    os.chdir(job.get("cwd", os.getcwd()))
    result = {"train": train, "eval": evaluate, "metric": metric,
              "floor": floor}[job["kind"]](job)
    result["peak_rss_main"] = peak_rss_self()
    write_result(job["result"], result)


if __name__ == "__main__":
    main()
