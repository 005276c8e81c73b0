"""Per-lever A/B of the training and inference speed work (issue 15): each lever's earlier
formulation (kept here, written with the current modules' own weights) against the current one,
timed alternately in one process, medians of the per-round ratios.

    python benchmarks/bench_levers.py [--rounds 7] [--width 512] [--batch 16] [--amp none bf16]
        [--levers heads attention block ln adamw ema]

Shapes: the TSL recipe (B 16, T 192, 6 levels, 8 heads, window 7). Levers:
  heads      cls + reg heads: one call per level on (B, C, T) memory (before) vs all levels packed
             in one call on channels-last (B, P, C) memory (convs as channels-last conv2d, fused LN);
  attention  the local attention's band: 2w + 1 shifted products (before) vs blocked matmuls;
  block      a stride-1 transformer block: (B, C, T) memory with 1x1 Conv1d, depthwise conv and
             the explicit LayerNorm (before) vs (B, T, C) memory, matmuls, fused LayerNorm;
  ln         the channel LayerNorm on (B, C, T) memory (explicit ops) vs (B, T, C) memory (fused);
  adamw      AdamW over the width-512 model's parameters: per-tensor loop vs fused;
  ema        the EMA update: per-tensor mul_/add_ vs torch._foreach_mul_/_foreach_add_.
"train" is forward + backward, "infer" forward only (no_grad). Run it under
``flock /tmp/bench.lock`` on a shared machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CPU = torch.device("cpu")

from libs.common.distributed import autocast, check_amp  # noqa: E402
from libs.modeling.attention import LocalMaskedMHCA  # noqa: E402
from libs.modeling.blocks import TransformerBlock  # noqa: E402
from libs.modeling.heads import ClsHead, RegHead  # noqa: E402
from libs.modeling.layers import ChannelLayerNorm, channels_last  # noqa: E402


# ------------------------------------------------------------------ the earlier formulations
def _ln_explicit(ln: ChannelLayerNorm, x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(1, keepdim=True)
    res = x - mu
    var = (res ** 2).mean(1, keepdim=True)
    return res / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _heads_per_level(cls: ClsHead, reg: RegHead, feats, masks) -> List[torch.Tensor]:
    def trunk(head, x, m):
        for conv, norm in zip(head.head, head.norm):
            x = F.relu(_ln_explicit(norm, conv(x.contiguous(), m)[0]))
        return x
    out = [cls.cls_head(trunk(cls, x, m), m)[0] for x, m in zip(feats, masks)]
    return out + [F.relu(s(reg.offset_head(trunk(reg, x, m), m)[0]))
                  for x, m, s in zip(feats, masks, reg.scale)]


def _band_slots(att: LocalMaskedMHCA, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    q, k, v, q_mask, kv_mask = att._qkv(x, mask)
    t, w, win = q.shape[2], att.half, att.window_size
    q = q * att.scale
    kp, vp = F.pad(k, (0, 0, w, w)), F.pad(v, (0, 0, w, w))
    s = torch.stack([(q * kp[:, :, o:o + t]).sum(-1) for o in range(win)], dim=-1)
    j = torch.arange(t)[:, None] + torch.arange(-w, w + 1)
    key_ok = F.pad(kv_mask[:, 0], (w, w), value=True).unfold(1, win, 1)
    s = s.masked_fill((j < 0) | (j >= t), float("-inf")) + (~key_ok).to(s.dtype)[:, None] * -1e4
    p = F.softmax(s, dim=-1).masked_fill(~kv_mask[:, :, :, None], 0.0)
    out = p[..., :1] * vp[:, :, 0:t]
    for o in range(1, win):
        out = out + p[..., o:o + 1] * vp[:, :, o:o + t]
    return att._merge(out, q_mask)


def _block_bct(blk: TransformerBlock, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The stride-1 block on (B, C, T) memory: conv1d 1x1 / depthwise, explicit LNs."""
    att = blk.attn
    h = _ln_explicit(blk.ln1, x)
    qkv = []
    for conv, norm, proj in ((att.query_conv, att.query_norm, att.query),
                             (att.key_conv, att.key_norm, att.key),
                             (att.value_conv, att.value_norm, att.value)):
        y = F.conv1d(h, conv.conv.weight, padding=1, groups=h.shape[1]) * mask.to(h.dtype)
        qkv.append(F.conv1d(_ln_explicit(norm, y), proj.weight, proj.bias))
    b, c, t = x.shape
    heads = [z.view(b, att.n_head, att.n_channels, t).transpose(2, 3) for z in qkv]
    from libs.modeling.attention import band_attention, band_bias, band_block
    blk_len = band_block(t)
    o = band_attention(heads[0] * att.scale, heads[1], heads[2],
                       band_bias(mask, att.half, blk_len, None), att.half, blk_len)
    o = F.conv1d(o.transpose(2, 3).reshape(b, c, t), att.proj.weight, att.proj.bias) * mask
    out = x * mask + blk.drop_path_attn(o)
    m0, m3 = blk.mlp[0], blk.mlp[3]
    y = F.conv1d(F.gelu(F.conv1d(_ln_explicit(blk.ln2, out), m0.weight, m0.bias)), m3.weight, m3.bias)
    return out + blk.drop_path_mlp(y * mask)


# ------------------------------------------------------------------ timing
def _timed(fn: Callable[[], object], train: bool) -> float:
    t0 = time.perf_counter()
    out = fn()
    if train:
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().sum() for o in outs).backward()
    return time.perf_counter() - t0


def ab(before: Callable, after: Callable, rounds: int, train: bool, amp: str) -> Dict[str, float]:
    def run(fn):
        with autocast(amp, CPU), (torch.enable_grad() if train else torch.no_grad()):
            return _timed(fn, train)
    run(before)
    run(after)
    tb, ta = [], []
    for _ in range(rounds):
        tb.append(run(before))
        ta.append(run(after))
    return {"before": statistics.median(tb), "after": statistics.median(ta),
            "ratio": statistics.median([b / a for b, a in zip(tb, ta)]),
            "lo": min(b / a for b, a in zip(tb, ta)), "hi": max(b / a for b, a in zip(tb, ta))}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=("none", "bf16"))
    p.add_argument("--levers", nargs="+", default=["heads", "attention", "block", "ln", "adamw", "ema"])
    a = p.parse_args(argv)
    for amp in a.amp:
        check_amp(amp, CPU, "--amp")         # emulated bf16 on this CPU: a warning
    torch.manual_seed(0)
    b, c, t = a.batch, a.width, 192
    lens = [t // 2 ** i for i in range(6)]
    feats = [channels_last(torch.randn(b, c, n)) for n in lens]      # the neck's output layout
    masks = [torch.ones(b, 1, n, dtype=torch.bool) for n in lens]
    x = torch.randn(b, c, t)
    mask = torch.ones(b, 1, t, dtype=torch.bool)
    cls = ClsHead(c, c, 12, prior_prob=0.01, num_layers=3, kernel_size=3, with_ln=True, empty_cls=[])
    reg = RegHead(c, c, 6, num_layers=3, kernel_size=3, with_ln=True)
    att = LocalMaskedMHCA(c, 8, 7)
    blk = TransformerBlock(c, 8, window_size=7, droppath=0.1)
    blk.drop_path_attn.stochastic_depth = blk.drop_path_mlp.stochastic_depth = False
    ln = ChannelLayerNorm(c)
    print(f"bench_levers: B {b}, width {c}, T {t}, {torch.get_num_threads()} thread(s), torch "
          f"{torch.__version__}; median of {a.rounds} interleaved rounds; ratio = before / after")
    print(f"{'lever':10s} {'amp':5s} {'mode':6s} {'before ms':>10s} {'after ms':>9s} {'ratio':>6s} (range)")
    rows = []
    for lever in a.levers:
        for amp in a.amp:
            for train in (True, False):
                if lever in ("adamw", "ema") and (amp != "none" or not train):
                    continue
                for m in (cls, reg, att, blk):
                    m.train(train)
                if lever == "heads":
                    r = ab(lambda: _heads_per_level(cls, reg, feats, masks),
                           lambda: cls(feats, masks) + reg(feats, masks), a.rounds, train, amp)
                elif lever == "attention":
                    r = ab(lambda: _band_slots(att, x, mask), lambda: att(x, mask)[0],
                           a.rounds, train, amp)
                elif lever == "block":
                    r = ab(lambda: _block_bct(blk, x, mask), lambda: blk(x, mask)[0],
                           a.rounds, train, amp)
                elif lever == "ln":
                    r = ab(lambda: _ln_explicit(ln, x), lambda: ln(channels_last(x)),
                           a.rounds, train, amp)
                else:
                    r = _bench_state(lever, a.rounds)
                rows.append((lever, amp, "train" if train else "infer", r))
                print(f"{lever:10s} {amp:5s} {'train' if train else 'infer':6s} "
                      f"{1e3 * r['before']:10.1f} {1e3 * r['after']:9.1f} {r['ratio']:6.2f} "
                      f"({r['lo']:.2f}-{r['hi']:.2f})", flush=True)
    return 0


def _bench_state(lever: str, rounds: int) -> Dict[str, float]:
    """AdamW step / EMA update over a TSL-sized parameter set (28.8M floats, 229 tensors)."""
    from libs.modeling.detector import Detector
    import inspect
    kw = dict(input_groups=[1792], group_proj_dims=None, max_seq_len=192, backbone="single_stream",
              backbone_arch=(2, 2, 5), scale_factor=2, n_head=8, n_mha_win_size=[7] * 5 + [-1],
              embd_kernel_size=3, embd_dim=512, embd_with_ln=True, neck="identity", fpn_dim=512,
              fpn_with_ln=True, fpn_start_level=0, head_dim=512, head_kernel_size=3,
              head_num_layers=3, head_with_ln=True, max_buffer_len_factor=1.0, use_abs_pe=True,
              use_rel_pe=False, regression_range=[[0, 4], [4, 8], [8, 16], [16, 32], [32, 64],
                                                  [64, 10000]], dropout=0.0, droppath=0.1,
              head_empty_cls=[])
    params = inspect.signature(Detector.__init__).parameters
    if "tasks" in params:      # the multi-task signature
        kw.update(tasks=["t"], task_num_classes=[12], task_regression="shared", input_dims=[1792],
                  modality_dropout=0.0, cls_prior_prob=[0.01])
    else:
        kw.update(num_classes=12, cls_prior_prob=0.01)
    model = Detector(**kw)
    ps = [q.detach() for q in model.parameters()]
    if lever == "adamw":
        def make(fused):
            qs = [q.clone().requires_grad_(True) for q in ps]
            for q in qs:
                q.grad = torch.randn_like(q) * 1e-3
            return torch.optim.AdamW(qs, lr=1e-3, foreach=None if fused else False,
                                     fused=fused or None).step
        before, after = make(False), make(True)
    else:
        dst_a, dst_b = [q.clone() for q in ps], [q.clone() for q in ps]

        def before():
            for e, s in zip(dst_a, ps):
                e.mul_(0.999).add_(s, alpha=0.001)

        def after():
            torch._foreach_mul_(dst_b, 0.999)
            torch._foreach_add_(dst_b, ps, alpha=0.001)
    return ab(before, after, rounds, False, "none")


if __name__ == "__main__":
    sys.exit(main())
