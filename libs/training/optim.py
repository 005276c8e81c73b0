"""Optimiser construction with the reference's weight-decay parameter groups (docs/numerics.md s.9.1).

Decay group: the ``weight`` of every ``nn.Linear`` / ``nn.Conv1d`` (the project's ``MaskedConv1D``
wraps an ``nn.Conv1d`` named ``conv``, so ``*.conv.weight`` lands here).
No-decay group: every ``*bias``; the ``weight`` of norm layers (any class whose name contains
``LayerNorm`` or ``GroupNorm``) and of ``nn.Embedding``; every ``*scale`` parameter (Scale,
AffineDropPath / LayerScale vectors); every ``*rel_pe``.

Every trainable parameter must land in exactly one group; a parameter matched by no rule (or by
both) is a bug of the model code and raises with its names. The decay group comes first; each
group is sorted by full parameter name, so the optimizer state layout is reproducible.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from libs.config.schema import OptConfig

log = logging.getLogger(__name__)

_DECAY_TYPES = (nn.Linear, nn.Conv1d)
_DECAY_CLASS_NAMES = ("MaskedConv1D",)
_NO_DECAY_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.Embedding)
_NO_DECAY_CLASS_KEYS = ("LayerNorm", "GroupNorm")


def _classify(module: nn.Module, pname: str) -> str | None:
    """Return 'decay', 'no_decay' or None (no rule matched) for ``module``'s own parameter."""
    cls_name = type(module).__name__
    if pname.endswith("bias"):
        return "no_decay"
    if pname.endswith("scale") or pname.endswith("rel_pe"):
        return "no_decay"
    if pname == "weight":
        if isinstance(module, _DECAY_TYPES) or cls_name in _DECAY_CLASS_NAMES:
            return "decay"
        if isinstance(module, _NO_DECAY_TYPES) or any(k in cls_name for k in _NO_DECAY_CLASS_KEYS):
            return "no_decay"
    return None


def split_decay_params(model: nn.Module) -> Tuple[List[str], List[str]]:
    """Split ``model``'s trainable parameters into (decay names, no-decay names), each sorted.

    Raises ``RuntimeError`` naming every parameter that matches no rule or both groups.
    Parameters shared between modules are listed once, under ``model.named_parameters()``'s name.
    """
    canonical: Dict[int, str] = {
        id(p): n for n, p in model.named_parameters() if p.requires_grad
    }
    groups: Dict[str, set] = {"decay": set(), "no_decay": set()}
    unmatched: List[str] = []
    for mname, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) not in canonical:
                continue  # frozen parameter
            full = f"{mname}.{pname}" if mname else pname
            kind = _classify(module, pname)
            if kind is None:
                unmatched.append(f"{full} ({type(module).__name__})")
            else:
                groups[kind].add(canonical[id(param)])
    both = sorted(groups["decay"] & groups["no_decay"])
    missing = sorted(set(canonical.values()) - groups["decay"] - groups["no_decay"])
    problems = []
    if unmatched:
        problems.append("parameters matched by no weight-decay rule: " + ", ".join(sorted(unmatched)))
    if both:
        problems.append("parameters in both weight-decay groups: " + ", ".join(both))
    if missing and not unmatched:
        problems.append("parameters in no weight-decay group: " + ", ".join(missing))
    if problems:
        raise RuntimeError("; ".join(problems))
    return sorted(groups["decay"]), sorted(groups["no_decay"])


def make_param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two optimizer param groups: decay (``weight_decay``) first, then no-decay (0.0)."""
    decay, no_decay = split_decay_params(model)
    params = dict(model.named_parameters())
    log.debug("weight decay groups: %d decay / %d no-decay tensors", len(decay), len(no_decay))
    return [
        {"params": [params[n] for n in decay], "weight_decay": float(weight_decay)},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, opt: OptConfig) -> torch.optim.Optimizer:
    """AdamW (torch default betas/eps) or SGD (``opt.momentum``) over the two decay groups, at
    ``opt.learning_rate`` as given (no scaling by the number of processes).

    AdamW runs its fused kernel (``fused=True``: one pass over all parameters, 3x faster than the
    per-tensor loop on CPU, docs/numerics.md s.9.2) when every parameter is a floating tensor on
    a CPU or CUDA device; the update is the same formula, rounded differently (1 ulp)."""
    groups = make_param_groups(model, opt.weight_decay)
    if opt.type == "AdamW":
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                     for p in params)
        return torch.optim.AdamW(groups, lr=opt.learning_rate, fused=fused or None)
    assert opt.type == "SGD", "opt.type is checked at config load"
    return torch.optim.SGD(groups, lr=opt.learning_rate, momentum=opt.momentum)
