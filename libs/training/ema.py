"""Exponential moving average of model weights (docs/numerics.md s.9.4).

``ema = d * ema + (1 - d) * model`` over every floating-point ``state_dict()`` entry after each
optimizer step; non-float entries (integer buffers) are copied. With ``warmup`` the decay of the
n-th update (n = 1, 2, ...) is ``d = min(decay, (1 + n) / (10 + n))``, so the first update uses
2/11 and the average follows the model closely early on (the original's fixed 0.999 makes short
runs evaluate near-initial weights: AF issue #103). ``warmup=False`` gives the original behaviour.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from libs.common.distributed import unwrap_model


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
