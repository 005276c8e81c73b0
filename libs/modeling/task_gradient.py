"""How the tasks' gradients meet in the shared trunk of a several-task model.

``train_cfg.task_gradient``: ``sum`` (default) lets every task's heads send their gradient into
the shared neck features as is (autograd adds them); ``project`` removes the conflicting part of
each task's gradient before they are added (gradient surgery, "PCGrad", Yu et al. 2020), here on
the features where the tasks branch rather than on the parameters, so the backbone still runs one
backward pass:

    per video b and pyramid level l, with g_t = d(w_t loss_t) / d(fpn_feats[l][b])  (C x T_l):
        g_t' = g_t - sum_{s != t, <g_t', g_s> < 0} <g_t', g_s> / |g_s|^2 g_s   (s in task order)
        gradient into the trunk = sum_t g_t'

With two tasks the projected gradients never point against the other task's (``<g_t', g_s> >=
0``); where the tasks agree nothing changes. ``priority`` projects a task only against the tasks
listed before it in ``task`` (the first task's gradient reaches the trunk unchanged, the others
add only what does not work against it). The forward pass is the identity (every task's heads
read the same values), so inference and the loss are unchanged; only the backward differs.
docs/numerics.md s.6.6.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

_EPS = 1e-20   # |g_s|^2 below this: g_s is zero, nothing to project on


def project_conflicts(grads: Tensor, priority: bool = False) -> Tensor:
    """PCGrad per row. ``grads (N, B, D)``: N tasks' gradients for B independent rows; returns
    ``(B, D)``, the sum over tasks of each task's gradient with its conflicts removed (module
    docstring; the tasks projected in order ``0..N-1``); with ``priority`` a task is projected
    only against the tasks before it (task 0's gradient is kept as it is). Float32 arithmetic
    for the dot products; the result has the dtype of ``grads``."""
    g = grads.float()
    sq = (g * g).sum(-1)                                                       # (N, B)
    out = torch.zeros_like(g[0])
    for t in range(g.shape[0]):
        gt = g[t].clone()
        for s in range(t if priority else g.shape[0]):
            if s == t:
                continue
            dot = (gt * g[s]).sum(-1)                                          # (B,)
            coef = torch.where((dot < 0) & (sq[s] > _EPS), dot / sq[s].clamp_min(_EPS),
                               torch.zeros_like(dot))
            gt = gt - coef[:, None] * g[s]
        out += gt
    return out.to(grads.dtype)


class _Branch(torch.autograd.Function):
    """Forward: ``num_tasks`` copies of one level ``(B, C, T)``; backward: their gradients
    combined by :func:`project_conflicts` per video."""

    @staticmethod
    def forward(ctx, x: Tensor, num_tasks: int, priority: bool) -> Tuple[Tensor, ...]:
        ctx.priority = priority
        return tuple(x.view_as(x) for _ in range(num_tasks))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        present = [g for g in grads if g is not None]
        if len(present) < 2:                      # at most one task reached this level
            return (present[0] if present else None), None, None
        b = present[0].shape[0]
        flat = torch.stack([g.reshape(b, -1) for g in present])               # (N, B, C*T)
        return project_conflicts(flat, ctx.priority).view_as(present[0]), None, None


def branch_features(feats: Sequence[Tensor], num_tasks: int, mode: str) -> List[List[Tensor]]:
    """Per task, the list of per-level features its heads read. ``mode`` ``sum``: the same
    tensors for every task (autograd adds the gradients); ``project`` / ``priority``: per-task
    copies whose gradients meet through :func:`project_conflicts` (``priority``: each task
    projected only against the tasks listed before it); outside autograd (e.g. in evaluation)
    the same tensors."""
    if mode == "sum" or num_tasks < 2 or not torch.is_grad_enabled():
        return [list(feats) for _ in range(num_tasks)]
    if mode not in ("project", "priority"):
        raise ValueError(f"task gradient mode: expected 'sum', 'project' or 'priority', got {mode!r}")
    per_level = [_Branch.apply(f, num_tasks, mode == "priority") for f in feats]
    return [[copies[t] for copies in per_level] for t in range(num_tasks)]
