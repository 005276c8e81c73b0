"""Weight-decay parameter groups, optimizer choice and the per-iteration LR schedules."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from libs.common.errors import UserError
from libs.training.optim import make_optimizer, split_decay_params
from libs.config.loader import resolve_section
from libs.training.scheduler import (LinearWarmupCosineAnnealingLR, LinearWarmupMultiStepLR,
                                     make_scheduler, num_epochs)


def opt_cfg(**keys):
    """An ``opt`` section validated like a config file's (schema defaults for the rest)."""
    return resolve_section("opt", keys, "test")


class LayerNorm(nn.Module):  # the project's channel LayerNorm stand-in (custom class)
    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, c, 1))
        self.bias = nn.Parameter(torch.zeros(1, c, 1))


class MaskedConv1D(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, 3, padding=1)


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Conv1d(4, 4, 1)
        self.rel_pe = nn.Parameter(torch.zeros(1, 1, 3))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embd = MaskedConv1D(2, 4)
        self.norm = LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.attn = Attn()
        self.head = nn.Linear(4, 3)
        self.scale = Scale()
        self.emb = nn.Embedding(5, 4)
        self.frozen = nn.Linear(4, 4)
        for p in self.frozen.parameters():
            p.requires_grad_(False)


DECAY = ["attn.query.weight", "embd.conv.weight", "head.weight"]
NO_DECAY = ["attn.query.bias", "attn.rel_pe", "emb.weight", "embd.conv.bias", "gn.bias", "gn.weight",
            "head.bias", "norm.bias", "norm.weight", "scale.scale"]


def test_param_groups_membership_and_order():
    model = Toy()
    decay, no_decay = split_decay_params(model)
    assert decay == DECAY
    assert no_decay == NO_DECAY
    opt = make_optimizer(model, opt_cfg(type="AdamW", learning_rate=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    params = dict(model.named_parameters())
    g0, g1 = opt.param_groups
    assert g0["weight_decay"] == 0.05 and g1["weight_decay"] == 0.0
    assert [id(p) for p in g0["params"]] == [id(params[n]) for n in DECAY]
    assert [id(p) for p in g1["params"]] == [id(params[n]) for n in NO_DECAY]
    assert g0["lr"] == 1e-3 and g0["betas"] == (0.9, 0.999) and g0["eps"] == 1e-8


def test_adamw_is_fused_and_steps_like_the_per_tensor_loop():
    torch.manual_seed(0)
    model, twin = Toy(), Toy()
    twin.load_state_dict(model.state_dict())
    fused = make_optimizer(model, opt_cfg(type="AdamW", learning_rate=1e-2, weight_decay=0.05))
    assert fused.param_groups[0]["fused"] is True
    loop = torch.optim.AdamW([{"params": [p for p in g["params"]], "weight_decay": g["weight_decay"]}
                              for g in make_optimizer(twin, opt_cfg(type="AdamW")).param_groups],
                             lr=1e-2, foreach=False)
    for _ in range(3):
        for m in (model, twin):
            for p in m.parameters():
                if p.requires_grad:
                    p.grad = torch.full_like(p, 0.1) * (1 + torch.arange(p.numel()).view_as(p) % 3)
        fused.step()
        loop.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name   # same update, other rounding


def test_param_groups_full_coverage_raises_with_names():
    model = Toy()
    model.odd = nn.Module()
    model.odd.gain = nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match=r"odd\.gain"):
        split_decay_params(model)


def test_sgd_and_unknown_type():
    opt = make_optimizer(Toy(), opt_cfg(**{"type": "SGD", "learning_rate": 0.1, "weight_decay": 1e-4,
                                 "momentum": 0.8}))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8
    with pytest.raises(UserError, match="opt.type"):
        opt_cfg(type="Adam", learning_rate=0.1)


def _opt(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)


def _run(sched, n: int) -> list:
    lrs = []
    for _ in range(n):
        lrs.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return lrs


def _closed(e: int, base: float, w: int, m: int, eta: float) -> float:
    if e < w:
        return base * e / (w - 1)
    return eta + 0.5 * (base - eta) * (1 + math.cos(math.pi * (e - w) / (m - w)))


def test_warmup_cosine_values():
    base, eta, iters = 1e-3, 1e-8, 4
    cfg = opt_cfg(**{"epochs": 5, "warmup": True, "warmup_epochs": 2, "schedule_type": "cosine", "eta_min": eta})
    w, m = 2 * iters, 7 * iters
    sched = make_scheduler(_opt(base), cfg, iters)
    assert isinstance(sched, LinearWarmupCosineAnnealingLR)
    lrs = _run(sched, m + 1)
    assert lrs[0] == 0.0
    assert lrs[w - 1] == base and lrs[w] == base
    for e in (1, 3, w + 1, w + 5, 15, m - 1):
        assert lrs[e] == pytest.approx(_closed(e, base, w, m, eta), rel=1e-12, abs=1e-20)
    after = lrs[w:]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert lrs[m] == pytest.approx(eta, abs=1e-20)
    assert num_epochs(cfg) == 7


def test_state_dict_round_trip_continues_identically():
    cfg = opt_cfg(**{"epochs": 3, "warmup": True, "warmup_epochs": 1, "schedule_type": "cosine", "eta_min": 0.0})
    ref = make_scheduler(_opt(), cfg, 5)
    full = _run(ref, 20)
    first = make_scheduler(_opt(), cfg, 5)
    _run(first, 7)
    state = first.state_dict()
    opt2 = _opt()
    resumed = make_scheduler(opt2, cfg, 5)
    resumed.load_state_dict(state)
    opt2.param_groups[0]["lr"] = resumed.get_last_lr()[0]  # the optimizer's state carries lr
    assert _run(resumed, 13) == full[7:]


def test_short_warmup_no_division_by_zero():
    sched = LinearWarmupCosineAnnealingLR(_opt(1.0), warmup_steps=1, max_steps=5)
    assert _run(sched, 2) == [1.0, pytest.approx(_closed(1, 1.0, 1, 5, 0.0))]
    zero = LinearWarmupCosineAnnealingLR(_opt(1.0), warmup_steps=0, max_steps=4)
    assert _run(zero, 5) == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                           0.5 - 0.5 * math.cos(math.pi / 4), 0.0])


def test_no_warmup_cosine_and_epochs():
    cfg = opt_cfg(**{"epochs": 4, "warmup": False, "warmup_epochs": 5, "schedule_type": "cosine", "eta_min": 0.0})
    sched = make_scheduler(_opt(2.0), cfg, 2)
    lrs = _run(sched, 9)
    assert lrs[0] == 2.0 and lrs[4] == pytest.approx(1.0) and lrs[8] == 0.0
    assert num_epochs(cfg) == 4
    assert num_epochs(dataclasses.replace(cfg, early_stop_epochs=2)) == 2


def test_multistep_with_and_without_warmup():
    cfg = opt_cfg(**{"epochs": 4, "warmup": True, "warmup_epochs": 1, "schedule_type": "multistep",
           "schedule_steps": [1, 3], "schedule_gamma": 0.5})
    sched = make_scheduler(_opt(1.0), cfg, 3)
    assert isinstance(sched, LinearWarmupMultiStepLR)
    lrs = _run(sched, 15)
    assert lrs[:3] == [0.0, 0.5, 1.0]
    assert lrs[3:6] == [1.0] * 3 and lrs[6:12] == [0.5] * 6 and lrs[12:] == [0.25] * 3
    plain = make_scheduler(_opt(1.0), dataclasses.replace(cfg, warmup=False), 3)  # the original crashed here
    lrs = _run(plain, 10)
    assert lrs[:3] == [1.0] * 3 and lrs[3:9] == [0.5] * 6 and lrs[9] == 0.25
    assert _run(LinearWarmupMultiStepLR(_opt(1.0), 0, [2], 0.1), 3) == pytest.approx([1.0, 1.0, 0.1])


def test_make_scheduler_errors():
    with pytest.raises(AssertionError):
        make_scheduler(_opt(), opt_cfg(epochs=1, warmup=False), 0)
    with pytest.raises(UserError, match="opt.schedule_type"):
        opt_cfg(epochs=1, warmup=False, schedule_type="step")
