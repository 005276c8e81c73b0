"""One measurement of the reference (PyPI ``actionformer==1.5.0``), run by
``benchmarks/compare_reference.py`` as ``PYTHONPATH=benchmarks/.ref/site python THIS JOB.json``.

Jobs (``kind``):
- ``train``: its ``actionformer.train.run`` (the CLI's code path: seed, dataset, loader with 4
  workers, DataParallel, AdamW groups, warm-up cosine, ModelEma) with ``train_one_epoch`` wrapped
  to time iterations (``limit`` set: stop after that many; unset: train to the end, for
  ``--accuracy``). Its print branch calls ``torch.cuda.synchronize()``, so ``print_freq`` is set
  beyond the epoch length on CPU.
- ``eval``: what its ``eval.py`` does (batch size 1, ``valid_one_epoch``, ``ANETdetection`` at
  tIoU 0.1:0.5), minus the CUDA ``map_location``; inference + NMS and the metric timed apart;
  detections saved for the caller's cross-check.
- ``metric``: ``ANETdetection.evaluate`` alone on saved prediction columns.
Only the standard library, numpy, torch and the reference are imported here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_common import (Breakdown, StopRun, TimedLoader, iteration_times,  # noqa: E402
                            peak_rss_self, profile_hooks, write_result)

TIOU = np.linspace(0.1, 0.5, 5)


def train(job: dict) -> dict:
    import actionformer.train as aft
    from actionformer.modeling.meta_archs import PtTransformer
    from actionformer.utils.train_utils import ModelEma
    original = aft.train_one_epoch
    stamps: list = []
    state: dict = {}
    prof: dict = {}

    def timed_epoch(train_loader, model, optimizer, scheduler, curr_epoch, **kw):
        kw["print_freq"] = 10 ** 9
        if "hooks" not in state:   # once per run (an epoch can be shorter than the measurement)
            state["hooks"] = {}
            if job.get("profile"):
                wrap = [(PtTransformer, "label_points", "losses + targets"),
                        (PtTransformer, "losses", "losses + targets"), (ModelEma, "update", "EMA")]
                state["hooks"] = profile_hooks(lambda: Breakdown(model, wrap), job["warmup"],
                                               job["profile_iters"], stamps, prof)
        loader = TimedLoader(train_loader, stamps, job.get("limit"), state["hooks"], state)
        return original(loader, model, optimizer, scheduler, curr_epoch, **kw)

    aft.train_one_epoch = timed_epoch
    args = argparse.Namespace(config=job["config"], output=job["name"], resume="",
                              print_freq=10 ** 9, ckpt_freq=job.get("ckpt_freq", 5))
    try:
        aft.run(args)
    except StopRun:
        pass
    return {"iter_times": iteration_times(stamps, job["warmup"]), "profile": prof,
            "first_batch_time": state.get("first_batch_time")}


def _model_and_cfg(config: str, ckpt: str, weights: str):
    from actionformer.core import load_config
    from actionformer.modeling import make_meta_arch
    from actionformer.utils import fix_random_seed
    cfg = load_config(config)
    fix_random_seed(0, include_cuda=True)
    model = torch.nn.DataParallel(make_meta_arch(cfg["model_name"], **cfg["model"]),
                                  device_ids=cfg["devices"])
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict_ema" if weights == "ema" else "state_dict"])
    return model, cfg


def evaluate(job: dict) -> dict:
    """inference + NMS = dataset and loader construction + ``valid_one_epoch`` less its metric
    call; metric = ``ANETdetection`` construction (ground truth) + ``evaluate``."""
    from actionformer.datasets import make_data_loader, make_dataset
    from actionformer.utils import ANETdetection, valid_one_epoch
    model, cfg = _model_and_cfg(job["config"], job["ckpt"], job.get("weights", "ema"))
    spent = {}

    class TimedEval(ANETdetection):
        def evaluate(self, preds, verbose=True):
            t = time.perf_counter()
            np.savez(job["detections"], video_ids=np.asarray(preds["video-id"]).astype(str),
                     t_start=preds["t-start"], t_end=preds["t-end"], labels=preds["label"],
                     scores=preds["score"])
            spent["save"] = time.perf_counter() - t
            t = time.perf_counter()
            out = super().evaluate(preds, verbose=False)
            spent["evaluate"] = time.perf_counter() - t
            return out

    t0 = time.perf_counter()
    val = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    loader = make_data_loader(val, False, None, 1, cfg["loader"]["num_workers"])
    t1 = time.perf_counter()
    det_eval = TimedEval(val.json_file, val.split[0], tiou_thresholds=TIOU)
    t2 = time.perf_counter()
    avg = valid_one_epoch(loader, model, -1, evaluator=det_eval, print_freq=10 ** 9)
    t3 = time.perf_counter()
    return {"infer": (t1 - t0) + (t3 - t2 - spent["evaluate"] - spent["save"]),
            "metric": (t2 - t1) + spent["evaluate"], "average_map": float(avg),
            "videos": len(val)}


def metric(job: dict) -> dict:
    from actionformer.utils import ANETdetection
    case = np.load(job["case"])
    det = ANETdetection(job["ann"], "valid", tiou_thresholds=TIOU)
    preds = {"video-id": list(case["video_ids"]), "t-start": case["t_start"],
             "t-end": case["t_end"], "label": case["labels"], "score": case["scores"]}
    t = time.perf_counter()
    _, avg, _ = det.evaluate(preds, verbose=False)
    return {"metric": time.perf_counter() - t, "average_map": float(avg)}


def main() -> None:
    job = json.load(open(sys.argv[1]))
    torch.set_num_threads(job["threads"])
    result = {"train": train, "eval": evaluate, "metric": metric}[job["kind"]](job)
    result["peak_rss_main"] = peak_rss_self()
    write_result(job["result"], result)


if __name__ == "__main__":
    main()
