"""The fp32 FLOP floor of the width-512 TSL model on this CPU, for ``compare_reference.py``.

Both sides run the same arithmetic (the same network: embedding convs, transformer matmuls,
512-wide head convs), so no implementation of it can run a step faster than its FLOPs at the
CPU's best rate for those kernels. This module measures both halves of that bound, in a worker
process of ours with the benchmark's thread count:

- :func:`model_flops`: the FLOPs of one training step (forward + backward) and of one inference
  forward of a batch, counted by ``torch.utils.flop_counter.FlopCounterMode``, split into
  convolutions and matmuls. torch 2.13's counter charges a grouped (depthwise) conv's backward as
  a dense conv (``groups`` ignored: 512x too much for the transformer's depthwise convs), so
  :func:`conv_backward_flops` replaces its formula: the forward's FLOPs once per gradient asked
  for (input, weight).
- :func:`peak_rates`: the best fp32 GFLOP/s of this CPU on the model's own dominant shapes (the
  head and embedding convs; the transformer's projections and MLP as ``F.linear``), medians of a
  few timed calls.

``floor = conv FLOPs / conv rate + matmul FLOPs / matmul rate`` is then a lower bound on any
implementation's time, and ``reference time / floor`` the best ratio a faster implementation of
the same arithmetic could reach on this CPU (``Report.floor``).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

aten = torch.ops.aten
CONV_OPS = ("convolution", "convolution_backward")


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: the forward conv's FLOPs (``w_shape`` carries
    ``C_in / groups``) for each of grad-input and grad-weight that ``output_mask`` asks for."""
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], None]) -> Dict[str, float]:
    """``{"conv": FLOPs, "matmul": FLOPs}`` of running ``fn`` (convs forward and backward; mm,
    addmm, bmm, attention kernels as matmuls)."""
    counter = FlopCounterMode(display=False,
                              custom_mapping={aten.convolution_backward: conv_backward_flops})
    with counter:
        fn()
    out = {"conv": 0.0, "matmul": 0.0}
    for op, n in counter.get_flop_counts()["Global"].items():
        out["conv" if str(op).split(".")[-1] in CONV_OPS else "matmul"] += float(n)
    return out


def model_flops(cfg, batch: int) -> Dict[str, Dict[str, float]]:
    """FLOPs of the configured detector (``cfg``: a resolved config) on ``batch`` videos of
    ``max_seq_len`` cells, all valid: ``{"train": {...}, "infer": {...}}`` (see
    :func:`count_flops`); ``train`` = forward + backward of a loss over every output (the
    losses' own FLOPs are negligible), ``infer`` = the forward under ``no_grad``."""
    from libs.modeling import Detector
    torch.manual_seed(0)
    model = Detector.from_config(cfg)
    T, C = cfg.dataset.max_seq_len, cfg.derived.input_dim
    feats = torch.randn(batch, C, T)
    masks = torch.ones(batch, 1, T, dtype=torch.bool)

    def step() -> None:
        out = model(feats, masks)
        sum(x.float().square().mean() for x in out["cls_logits"] + out["offsets"]).backward()

    def forward() -> None:
        with torch.no_grad():
            model(feats, masks)

    model.train()
    train = count_flops(step)
    model.eval()
    return {"train": train, "infer": count_flops(forward)}


def _rate(fn: Callable[[], torch.Tensor], flops: float, repeats: int) -> float:
    fn()
    times: List[float] = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


@torch.no_grad()
def peak_rates(width: int = 512, batch: int = 16, cells: int = 192, in_dim: int = 1792,
               repeats: int = 5) -> Dict[str, float]:
    """Best fp32 GFLOP/s of this process's threads on the model's shapes: ``conv`` (the heads'
    kernel-3 ``width -> width`` conv over all levels packed, ~2 ``cells``; the embedding's
    ``in_dim -> width``), ``matmul`` (``F.linear`` of ``batch * cells`` rows: ``width -> 4 width``,
    ``4 width -> width``, ``width -> 3 width``)."""
    g = torch.Generator().manual_seed(0)
    conv, mm = [], []
    for c_in, t in ((width, 2 * cells), (in_dim, cells)):
        x = torch.randn(batch, c_in, t, generator=g)
        w = torch.randn(width, c_in, 3, generator=g)
        conv.append(_rate(lambda: F.conv1d(x, w, padding=1), 2.0 * batch * t * width * c_in * 3,
                          repeats))
    rows = batch * cells
    for c_in, c_out in ((width, 4 * width), (4 * width, width), (width, 3 * width)):
        x = torch.randn(rows, c_in, generator=g)
        w = torch.randn(c_out, c_in, generator=g)
        mm.append(_rate(lambda: F.linear(x, w), 2.0 * rows * c_in * c_out, repeats))
    return {"conv": max(conv), "matmul": max(mm)}


def floor_seconds(flops: Dict[str, float], rates: Dict[str, float]) -> float:
    """``conv FLOPs / conv GFLOP/s + matmul FLOPs / matmul GFLOP/s``, seconds."""
    return flops["conv"] / (rates["conv"] * 1e9) + flops["matmul"] / (rates["matmul"] * 1e9)


def floor_job(cfg, batch: int) -> Dict[str, object]:
    """What the ``floor`` worker job returns: FLOPs per batch, per-video inference FLOPs, the
    measured rates and the two floors (a training iteration of ``batch``; inference per video)."""
    flops = model_flops(cfg, batch)
    rates = peak_rates(width=cfg.model.embd_dim, batch=batch, cells=cfg.dataset.max_seq_len,
                       in_dim=cfg.derived.input_dim)
    per_video = {k: v / batch for k, v in flops["infer"].items()}
    return {"flops": flops, "rates": rates, "batch": batch,
            "train_floor": floor_seconds(flops["train"], rates),
            "infer_floor_per_video": floor_seconds(per_video, rates)}
