"""Exponential moving average of model weights (docs/numerics.md s.9.4).

``ema = d * ema + (1 - d) * model`` over every floating-point ``state_dict()`` entry after each
optimizer step; non-float entries (integer buffers) are copied. With ``warmup`` the decay of the
n-th update (n = 1, 2, ...) is ``d = min(decay, (1 + n) / (10 + n))``, so the first update uses
2/11 and the average follows the model closely early on (the original's fixed 0.999 makes short
runs evaluate near-initial weights: AF issue #103). ``warmup=False`` gives the original behaviour.

``warn_if_ema_immature`` (validation in train.py, eval.py) says in one warning line when the EMA
weights being evaluated are still mostly the initial weights (docs/differences.md s.2.3).
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from libs.common.distributed import unwrap_model

log = logging.getLogger(__name__)

# The share of the initial weights above which evaluating the EMA is flagged: e^-1, what a fixed
# decay d leaves after 1/(1 - d) updates (d ** (1/(1-d)) -> 1/e).
IMMATURE_SHARE = math.exp(-1.0)


class ModelEma:
    """Holds ``module``, an averaged copy of a model (eval mode, ``requires_grad`` off)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool,
                 device: Optional[torch.device] = None):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.module: nn.Module = copy.deepcopy(unwrap_model(model))
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if device is not None:
            self.module.to(device)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0

    def current_decay(self) -> float:
        """Decay the next ``update`` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average (call after every optimizer step)."""
        d = self.current_decay()
        src = unwrap_model(model).state_dict()
        dst = self.module.state_dict()
        assert src.keys() == dst.keys(), (
            f"EMA and model state dicts differ: {sorted(set(src) ^ set(dst))[:5]}")
        for key, e in dst.items():
            m = src[key].detach().to(device=e.device)
            if e.is_floating_point():
                e.mul_(d).add_(m.to(e.dtype), alpha=1.0 - d)
            else:
                e.copy_(m)
        self.num_updates += 1

    def state_dict(self) -> Dict[str, Any]:
        """The average's bookkeeping, ``{'num_updates', 'decay', 'warmup'}``; its weights are
        ``module.state_dict()`` (checkpoints store them once, as ``state_dict_ema``)."""
        return {"num_updates": self.num_updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``num_updates`` from a :meth:`state_dict`; ``decay``/``warmup`` stay those of
        the constructor (the config wins)."""
        self.num_updates = int(state["num_updates"])


def initial_weight_share(num_updates: int, decay: float, warmup: bool) -> float:
    """The coefficient of the initial weights in the average after ``num_updates`` updates:
    ``prod_n d_n`` with ``d_n`` as in :meth:`ModelEma.current_decay` (``decay ** num_updates``
    without warm-up). 1.0 before any update."""
    n = int(num_updates)
    if n <= 0:
        return 1.0
    if decay <= 0.0:
        return 0.0
    if not warmup:
        return float(decay) ** n
    # (1+i)/(10+i) < decay exactly for i < (10 decay - 1) / (1 - decay): the ramp, then decay;
    # prod_{i=1..m} (1+i)/(10+i) = Gamma(m+2) Gamma(11) / (Gamma(2) Gamma(m+11))
    ramp = n if decay >= 1.0 else min(n, max(0, math.ceil((10.0 * decay - 1.0) / (1.0 - decay))))
    log_share = math.lgamma(ramp + 2) + math.lgamma(11) - math.lgamma(ramp + 11)
    if n > ramp:
        log_share += (n - ramp) * math.log(decay)
    return math.exp(log_share)


def ema_immaturity(state: Mapping[str, Any]) -> Optional[str]:
    """A one-line warning when EMA weights with bookkeeping ``state`` (:meth:`ModelEma.state_dict`,
    a checkpoint's ``ema`` entry) are still mostly the initial weights (share > 1/e, i.e. with a
    fixed decay fewer than ~1/(1 - decay) updates); None when they are not."""
    n, decay, warmup = int(state["num_updates"]), float(state["decay"]), bool(state["warmup"])
    share = initial_weight_share(n, decay, warmup)
    if share <= IMMATURE_SHARE:
        return None
    if warmup:
        how, fix = f"(decay warm-up to {decay:g})", "evaluate the raw weights (eval.py --no-ema)"
    else:
        horizon = f" (fewer than ~1/(1 - decay) = {1.0 / (1.0 - decay):,.0f})" if decay < 1.0 else ""
        how = f"at the fixed decay {decay:g}{horizon}"
        fix = ("evaluate the raw weights (eval.py --no-ema) or train with train.ema_warmup: true "
               "(docs/differences.md s.2.3)")
    return (f"the EMA weights absorbed only {n:,} updates {how}: {100 * share:.0f}% of the "
            f"average is still the initial weights, so its mAP says little about the training; "
            f"{fix}")


def warn_if_ema_immature(state: Optional[Mapping[str, Any]], where: str) -> Optional[str]:
    """Log :func:`ema_immaturity` of ``state`` as one warning naming ``where`` (a checkpoint, a
    validation epoch); returns the message. ``state`` None (e.g. a converted original checkpoint
    without bookkeeping) says nothing."""
    if not state:
        return None
    msg = ema_immaturity(state)
    if msg is not None:
        log.warning("%s (%s)", msg, where)
    return msg
