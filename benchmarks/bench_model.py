"""Training and inference throughput of the full-size detectors on random inputs.

    python benchmarks/bench_model.py [--device cpu|cuda] [--iters N] [--batch B]
        [--configs configs/perception_tsl_multi_train.yaml configs/perception_tal_multi_train.yaml]

For each config: the model exactly as configured (TSL: single-stream 1792 -> 512; TAL: fusion
-> 1024), a batch of B videos padded to max_seq_len with 3 random events each, and
  train: forward + label assignment + losses + backward + clipping + AdamW step + EMA update,
  infer: forward + per-level decoding + soft-NMS (the configured test_cfg) per video,
timed after warm-up iterations. Prints one table row per config (seconds per iteration, videos/s).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.config.loader import load_config  # noqa: E402
from libs.training.loop import compute_losses  # noqa: E402
from libs.modeling.detector import count_parameters  # noqa: E402
from libs.modeling import Detector  # noqa: E402
from libs.modeling.decode import decode_candidates  # noqa: E402
from libs.modeling.losses import LossNormalizer  # noqa: E402
from libs.training.ema import ModelEma  # noqa: E402
from libs.ops.nms import batched_nms_videos  # noqa: E402
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
            "segments": segments, "labels": labels}


def bench(config: str, device: torch.device, iters: int, batch: int) -> dict:
    cfg = load_config(config)
    torch.manual_seed(0)
    model = Detector.from_config(cfg).to(device)
    data = _batch(cfg, batch, device, torch.Generator().manual_seed(0))
    opt = make_optimizer(model, cfg.opt)
    ema = ModelEma(model, cfg.train.ema_decay, warmup=True)
    norm = LossNormalizer(cfg.train_cfg.init_loss_norm, cfg.train_cfg.loss_norm_momentum)
    tc = cfg.test_cfg

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(data["feats"], data["masks"])
        losses = compute_losses(out, data, norm, cfg.train_cfg, model.num_classes)
        losses["final_loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.opt.clip_grad_l2norm)
        opt.step()
        ema.update(model)

    @torch.no_grad()
    def infer_step():
        model.eval()
        out = model(data["feats"], data["masks"])
        cands = decode_candidates(out["points"], out["cls_logits"], out["offsets"], out["fpn_masks"],
                                  tc.pre_nms_thresh, tc.pre_nms_topk, tc.duration_thresh)
        if device.type != "cuda":
            cands = [{k: v.cpu() for k, v in c.items()} for c in cands]
        batched_nms_videos([(c["segments"], c["scores"], c["labels"]) for c in cands],
                           **dataclasses.asdict(tc.nms))

    result = {"config": Path(config).stem, "params": count_parameters(model)}
    for name, step in (("train", train_step), ("infer", infer_step)):
        for _ in range(2):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        result[name] = (time.perf_counter() - t0) / iters
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--configs", nargs="+", default=["configs/perception_tsl_multi_train.yaml",
                                                    "configs/perception_tal_multi_train.yaml"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    rows = [bench(c, device, args.iters, args.batch) for c in args.configs]
    print(f"model benchmark: batch {args.batch} x max_seq_len, {args.iters} timed iterations, "
          f"device {name}, torch {torch.__version__}")
    print(f"{'config':32s} {'params':>12s} {'train s/it':>11s} {'train vid/s':>12s} "
          f"{'infer s/it':>11s} {'infer vid/s':>12s}")
    for r in rows:
        print(f"{r['config']:32s} {r['params']:12,d} {r['train']:11.3f} {args.batch / r['train']:12.1f} "
              f"{r['infer']:11.3f} {args.batch / r['infer']:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
