"""Per-iteration learning-rate schedules (docs/numerics.md s.9.3), in closed form.

All schedules are stepped once per iteration, after ``optimizer.step()``. ``e`` below is the
scheduler's step count (``last_epoch``), ``base`` a param group's ``initial_lr``,
``W = warmup_epochs * iters_per_epoch`` and ``M = (epochs + warmup_epochs) * iters_per_epoch``.

Warmup (``W >= 2``): ``lr_e = base * e / (W - 1)`` for ``e < W``: the first iteration runs at lr 0
(as in the original) and the warmup reaches ``base`` at ``e = W - 1``; ``lr_W = base``.
With ``W <= 1`` there is no warmup step: ``lr_0 = base`` (a one-step warmup would only waste an
iteration at lr 0; the original never divided by zero here only thanks to its ``e == 0`` branch).

- cosine, ``e >= W``: ``eta_min + 0.5 * (base - eta_min) * (1 + cos(pi * (e - W) / (M - W)))``,
  held at ``eta_min`` for ``e >= M`` (the original's chainable form equals this to 1e-20 within M).
- multistep, ``e >= W``: ``base * gamma ** k`` with ``k`` the number of milestones (in iterations,
  counted after warmup) ``<= e - W``; a milestone at 0 therefore applies from ``e = W`` on (the
  original ignored it).

The no-warmup variants are the same formulas with ``W = 0`` (the original's no-warmup cosine used
eta_min 0 over ``epochs`` only; ours uses ``opt.eta_min``; its no-warmup multistep crashed).
The closed form makes ``state_dict()`` round trips exact and steps independent of rounding drift.
"""
from __future__ import annotations

import bisect
import math
from typing import List, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from libs.config.schema import OptConfig


class _ClosedFormLR(LRScheduler):
    """Base: ``get_lr`` evaluates ``lr_at(base, last_epoch)`` for every param group."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, last_epoch: int = -1):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer, last_epoch)

    def _after_warmup(self, base: float, step: int) -> float:
        """lr for ``step >= warmup_steps``."""
        raise NotImplementedError

    def lr_at(self, base: float, step: int) -> float:
        """Learning rate of a group with peak ``base`` at scheduler step ``step`` (>= 0)."""
        w = self.warmup_steps
        if step < w and w > 1:
            return base * (step / (w - 1))  # exactly base at step w - 1
        return self._after_warmup(base, step)

    def get_lr(self) -> List[float]:
        return [self.lr_at(base, self.last_epoch) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


class LinearWarmupCosineAnnealingLR(_ClosedFormLR):
    """Linear warmup over ``warmup_steps`` iterations, then cosine to ``eta_min`` at ``max_steps``.

    ``warmup_steps = 0`` gives plain cosine annealing over ``max_steps``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                 eta_min: float = 0.0, last_epoch: int = -1):
        if max_steps < warmup_steps:
            raise ValueError(f"max_steps ({max_steps}) < warmup_steps ({warmup_steps})")
        self.max_steps = int(max_steps)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, warmup_steps, last_epoch)

    def _after_warmup(self, base: float, step: int) -> float:
        w, m = self.warmup_steps, self.max_steps
        if step <= w or m <= w:
            return base
        if step >= m:
            return self.eta_min
        return self.eta_min + 0.5 * (base - self.eta_min) * (1.0 + math.cos(math.pi * (step - w) / (m - w)))


class LinearWarmupMultiStepLR(_ClosedFormLR):
    """Linear warmup over ``warmup_steps`` iterations, then ``base * gamma ** k`` after the
    ``k``-th milestone (``milestones`` in iterations counted from the end of warmup).

    ``warmup_steps = 0`` gives plain multistep decay with absolute milestones.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, milestones: Sequence[int],
                 gamma: float = 0.1, last_epoch: int = -1):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, warmup_steps, last_epoch)

    def _after_warmup(self, base: float, step: int) -> float:
        k = bisect.bisect_right(self.milestones, step - self.warmup_steps)
        return base * self.gamma ** k


def warmup_epochs(opt: OptConfig) -> int:
    """Warmup epochs in effect: ``opt.warmup_epochs`` if ``opt.warmup`` is true, else 0."""
    return opt.warmup_epochs if opt.warmup else 0


def num_epochs(opt: OptConfig) -> int:
    """Epochs the training loop runs: ``early_stop_epochs`` if set, else epochs + warmup epochs.

    ``early_stop_epochs`` only truncates the loop; the schedule still spans epochs + warmup.
    """
    if opt.early_stop_epochs is not None:
        return opt.early_stop_epochs
    return opt.epochs + warmup_epochs(opt)


def make_scheduler(optimizer: torch.optim.Optimizer, opt: OptConfig,
                   iters_per_epoch: int) -> LRScheduler:
    """The per-iteration schedule of ``opt`` (``schedule_type`` cosine or multistep)."""
    assert iters_per_epoch >= 1, "train.py refuses an empty training loader"
    w = warmup_epochs(opt) * iters_per_epoch
    m = (opt.epochs + warmup_epochs(opt)) * iters_per_epoch
    if opt.schedule_type == "cosine":
        return LinearWarmupCosineAnnealingLR(optimizer, w, m, opt.eta_min)
    assert opt.schedule_type == "multistep", "opt.schedule_type is checked at config load"
    steps = [s * iters_per_epoch for s in opt.schedule_steps]
    return LinearWarmupMultiStepLR(optimizer, w, steps, opt.schedule_gamma)
