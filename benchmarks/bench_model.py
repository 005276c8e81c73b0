"""Training and inference throughput of the detectors on random inputs, per precision and
``torch.compile`` setting.

    python benchmarks/bench_model.py [--device cpu|cuda] [--iters N] [--repeats R] [--batch B]
        [--amp none bf16] [--compile off on] [--no-infer]
        [--configs configs/perception_tsl_multi_train.yaml configs/perception_tal_multi_train.yaml]

For each config: the model exactly as configured (TSL: single-stream 1792 -> 512; TAL: fusion
-> 1024), a batch of B videos padded to max_seq_len with 3 random events each, and
  train: ``libs/training/loop.py: train_one_epoch`` over N copies of the batch (forward under
         ``train.amp``'s autocast, label assignment + fp32 losses, backward, clipping, AdamW step,
         EMA update; the GradScaler for fp16),
  infer: forward under autocast + per-level decoding (fp32) + soft-NMS (the configured test_cfg).
Every variant (amp x compile) has its own model. ``first s`` is the first training step
(compilation included). Then R rounds, each timing N iterations of every variant in turn
(interleaved, so a busy machine slows all variants alike); the table shows the median over the
rounds, the min-max spread and the ratio to the first variant. Inference is not compiled (eval.py
does not compile), so it is timed for compile off only.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.distributed import autocast, check_amp  # noqa: E402
from libs.config.loader import load_config  # noqa: E402
from libs.modeling import Detector  # noqa: E402
from libs.modeling.decode import decode_candidates  # noqa: E402
from libs.modeling.detector import count_parameters  # noqa: E402
from libs.modeling.losses import LossNormalizer  # noqa: E402
from libs.ops.nms import batched_nms_videos  # noqa: E402
from libs.training.checkpointing import TrainState  # noqa: E402
from libs.training.ema import ModelEma  # noqa: E402
from libs.training.loop import make_grad_scaler, prepare_model, train_one_epoch  # noqa: E402
from libs.training.optim import make_optimizer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(cfg, batch: int, device: torch.device, gen: torch.Generator) -> dict:
    T, C = cfg.dataset.max_seq_len, cfg.derived.input_dim
    segments, labels = [], []
    for _ in range(batch):
        start = torch.rand(3, generator=gen) * (T - 40)
        length = 2 + torch.rand(3, generator=gen) * 36
        segments.append(torch.stack([start, start + length], 1).to(device))
        labels.append(torch.randint(0, cfg.dataset.num_classes, (3,), generator=gen).to(device))
    return {"feats": torch.randn(batch, C, T, generator=gen).to(device),
            "masks": torch.ones(batch, 1, T, dtype=torch.bool, device=device),
            "segments": segments, "labels": labels,
            "video_ids": [f"random_{i}" for i in range(batch)]}


class _NoSchedule:
    def step(self) -> None:
        pass


class Variant:
    """One (amp, compile) setting of a config: its own model, optimiser, EMA and scaler."""

    def __init__(self, cfg, amp: str, compiled: bool, device: torch.device, data: dict):
        self.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp,
                                                                      compile=compiled))
        self.name = f"{amp}{' + compile' if compiled else ''}"
        self.amp, self.compiled, self.device, self.data = amp, compiled, device, data
        torch.manual_seed(0)
        self.model = Detector.from_config(self.cfg).to(device)
        self.train_model = prepare_model(self.model, self.cfg, device)
        self.opt = make_optimizer(self.model, self.cfg.opt)
        self.ema = ModelEma(self.model, self.cfg.train.ema_decay, warmup=True)
        self.norm = LossNormalizer(cfg.train_cfg.init_loss_norm, cfg.train_cfg.loss_norm_momentum)
        self.scaler = make_grad_scaler(amp, device)
        self.state = TrainState()
        self.train_s: List[float] = []
        self.infer_s: List[float] = []

    def train(self, iters: int) -> float:
        """Seconds per iteration of ``iters`` training steps."""
        _sync(self.device)
        t0 = time.perf_counter()
        train_one_epoch(self.train_model, [self.data] * iters, self.opt, _NoSchedule(), self.ema,
                        self.norm, self.cfg, self.state, self.device, scaler=self.scaler,
                        show_progress=False)
        _sync(self.device)
        return (time.perf_counter() - t0) / iters

    @torch.no_grad()
    def infer(self, iters: int) -> float:
        tc, data = self.cfg.test_cfg, self.data
        self.model.eval()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            with autocast(self.amp, self.device):
                out = self.model(data["feats"], data["masks"])
            cands = decode_candidates(out["points"], [x.float() for x in out["cls_logits"]],
                                      [x.float() for x in out["offsets"]], out["fpn_masks"],
                                      tc.pre_nms_thresh, tc.pre_nms_topk, tc.duration_thresh)
            if self.device.type != "cuda":
                cands = [{k: v.cpu() for k, v in c.items()} for c in cands]
            batched_nms_videos([(c["segments"], c["scores"], c["labels"]) for c in cands],
                               **dataclasses.asdict(tc.nms))
        _sync(self.device)
        return (time.perf_counter() - t0) / iters


def bench(config: str, device: torch.device, args) -> List[dict]:
    cfg = load_config(config)
    data = _batch(cfg, args.batch, device, torch.Generator().manual_seed(0))
    variants = []
    for compiled in args.compile:
        for amp in args.amp:
            check_amp(amp, device, "--amp")
            variants.append(Variant(cfg, amp, compiled == "on", device, data))
    first: Dict[str, float] = {}
    for v in variants:   # the first step (compilation), then one more of warm-up
        first[v.name] = v.train(1)
        v.train(1)
        if not args.no_infer and not v.compiled:
            v.infer(1)
    for _ in range(args.repeats):
        for v in variants:
            v.train_s.append(v.train(args.iters))
            if not args.no_infer and not v.compiled:
                v.infer_s.append(v.infer(args.iters))
    rows = []
    for v in variants:
        rows.append({"config": Path(config).stem, "variant": v.name,
                     "params": count_parameters(v.model), "first": first[v.name],
                     "train": statistics.median(v.train_s), "train_lo": min(v.train_s),
                     "train_hi": max(v.train_s),
                     "infer": statistics.median(v.infer_s) if v.infer_s else None})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5, help="iterations per timed round")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (the table: medians)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--amp", nargs="+", default=["none"], choices=("none", "bf16", "fp16"))
    p.add_argument("--compile", nargs="+", default=["off"], choices=("off", "on"))
    p.add_argument("--no-infer", action="store_true", help="time training only")
    p.add_argument("--configs", nargs="+", default=["configs/perception_tsl_multi_train.yaml",
                                                    "configs/perception_tal_multi_train.yaml"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    rows = [r for c in args.configs for r in bench(c, device, args)]
    print(f"model benchmark: batch {args.batch} x max_seq_len, median of {args.repeats} rounds of "
          f"{args.iters} iterations, device {name}, torch {torch.__version__}")
    print(f"{'config':30s} {'variant':16s} {'params':>11s} {'first s':>8s} {'train s/it':>10s} "
          f"{'(min-max)':>13s} {'vs first':>8s} {'train vid/s':>11s} {'infer s/it':>10s} "
          f"{'infer vid/s':>11s}")
    base: Dict[str, dict] = {}
    for r in rows:
        ref = base.setdefault(r["config"], r)
        infer = (f"{r['infer']:10.3f} {args.batch / r['infer']:11.1f}" if r["infer"] is not None
                 else f"{'-':>10s} {'-':>11s}")
        print(f"{r['config']:30s} {r['variant']:16s} {r['params']:11,d} {r['first']:8.2f} "
              f"{r['train']:10.3f} {r['train_lo']:6.3f}-{r['train_hi']:6.3f} "
              f"{r['train'] / ref['train']:8.2f} {args.batch / r['train']:11.1f} {infer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
