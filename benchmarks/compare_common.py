"""Helpers of the measurement workers of ``benchmarks/compare_reference.py``, for both sides.

Standard library and torch only: the reference's worker imports nothing else of this project.
- :class:`TimedLoader` wraps a training loader: the moment each batch is handed out (so iteration
  ``i`` lasts ``t[i+1] - t[i]``, compute plus the next fetch), the wall-clock time of the first
  one, a stop after ``limit`` iterations (:class:`StopRun`), and callbacks at given iterations.
- :class:`Breakdown` (``--profile``): torch.profiler over a few iterations with one range per
  module category (forward hooks); each backward op is charged to the category of the forward
  op that created it (same autograd sequence number).
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch


class StopRun(Exception):
    """Raised from inside the training loop once the measured iterations are done."""


def peak_rss_self() -> int:
    """This process's peak resident set (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def write_result(path: str, result: Dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)


class TimedLoader:
    """Iterate ``loader`` recording ``time.perf_counter()`` as each batch is handed out;
    ``first_batch_time`` is the wall clock (``time.time()``) of the first. After ``limit + 1``
    batches (``limit`` complete iterations) :class:`StopRun` is raised; ``hooks[k]()`` runs just
    before batch ``k`` (0-based) is handed out."""

    def __init__(self, loader: Any, stamps: List[float], limit: Optional[int],
                 hooks: Optional[Dict[int, Callable[[], None]]] = None,
                 state: Optional[Dict[str, Any]] = None) -> None:
        self.loader, self.stamps, self.limit = loader, stamps, limit
        self.hooks = hooks or {}
        self.state = state if state is not None else {}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            k = len(self.stamps)
            if self.limit is not None and k > self.limit:
                raise StopRun
            if k in self.hooks:
                self.hooks[k]()
            self.stamps.append(time.perf_counter())
            if k == 0:
                self.state["first_batch_time"] = time.time()
            yield batch


def iteration_times(stamps: List[float], warmup: int) -> List[float]:
    """Seconds of each complete iteration after the first ``warmup`` ones."""
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]


# ---------------------------------------------------------------------------------------- profile
# module name (without DataParallel's 'module.') -> category; both sides use the original's names
CATEGORIES: Tuple[Tuple[str, str], ...] = (
    ("heads (cls + reg)", r"^(cls_head|reg_head)$"),
    ("attention", r"\.attn$"),
    ("MLP", r"\.mlp$"),
    ("embedding convs", r"^backbone\.embd\.\d+$"),
    ("norms", r"(\.ln[12]|^backbone\.embd_norm\.\d+|^neck)$"),
)
BACKWARD_PREFIX = "autograd::engine::evaluate_function:"
ORDER = ("heads (cls + reg)", "attention", "MLP", "embedding convs", "norms", "losses + targets",
         "model glue (masks, pos. emb., points)", "optimizer", "EMA",
         "rest (Python, data, autograd engine)")


class Breakdown:
    """Per-category seconds per iteration of a training run (see the module docstring).

    ``wrap`` lists ``(owner, attribute, category)`` functions to run inside a range (losses,
    EMA update). ``start()`` / ``stop(n_iterations, wall_seconds)`` bracket the profiled
    iterations; :attr:`result` then holds ``{category: s/iteration}`` and the top ops."""

    def __init__(self, model: torch.nn.Module, wrap: Iterable[Tuple[Any, str, str]] = ()) -> None:
        self.active = False
        self.result: Dict[str, Any] = {}
        self._stack: List[Any] = []
        for name, mod in model.named_modules():
            name = name[7:] if name.startswith("module.") else name
            cat = next((c for c, pat in CATEGORIES if re.search(pat, name)), None)
            if name == "":
                cat = "model glue (masks, pos. emb., points)"
            if cat is not None:
                mod.register_forward_pre_hook(self._enter(cat))
                mod.register_forward_hook(self._exit)
        for owner, attr, cat in wrap:
            setattr(owner, attr, self._ranged(getattr(owner, attr), cat))
        self._prof = None

    def _enter(self, cat: str):
        def hook(module, args):
            if self.active:
                rf = torch.autograd.profiler.record_function(f"cat::{cat}")
                rf.__enter__()
                self._stack.append(rf)
        return hook

    def _exit(self, module, args, output):
        if self.active and self._stack:
            self._stack.pop().__exit__(None, None, None)

    def _ranged(self, fn, cat: str):
        def wrapper(*a, **k):
            if not self.active:
                return fn(*a, **k)
            with torch.autograd.profiler.record_function(f"cat::{cat}"):
                return fn(*a, **k)
        return wrapper

    def start(self) -> None:
        self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self._prof.__enter__()
        self.active = True

    def stop(self, n_iter: int, wall: float) -> None:
        self.active = False
        self._prof.__exit__(None, None, None)
        events = self._prof.events()
        per: Dict[str, float] = defaultdict(float)
        seq_cat: Dict[int, str] = {}
        for ev in events:
            name = ev.name
            if name.startswith("cat::"):
                parent = ev.cpu_parent
                while parent is not None and not parent.name.startswith("cat::"):
                    parent = parent.cpu_parent
                own = ev.cpu_time_total
                per[name[5:]] += own
                if parent is not None:       # nested range: charge its parent the rest only
                    per[parent.name[5:]] -= own
            elif ev.sequence_nr >= 0 and not name.startswith(BACKWARD_PREFIX):
                parent = ev.cpu_parent
                while parent is not None and not parent.name.startswith("cat::"):
                    parent = parent.cpu_parent
                if parent is not None:
                    seq_cat.setdefault(ev.sequence_nr, parent.name[5:])
        for ev in events:
            if ev.name.startswith(BACKWARD_PREFIX) and ev.cpu_parent is None:
                cat = seq_cat.get(ev.sequence_nr, "model glue (masks, pos. emb., points)")
                per[cat] += ev.cpu_time_total
            elif ev.name.startswith("Optimizer.step#") and ev.cpu_parent is None:
                per["optimizer"] += ev.cpu_time_total
        out = {k: v / 1e6 / n_iter for k, v in per.items()}
        out["rest (Python, data, autograd engine)"] = wall / n_iter - sum(out.values())
        top = sorted(events.key_averages(), key=lambda e: -e.self_cpu_time_total)
        self.result = {"categories": out, "wall": wall / n_iter,
                       "top_ops": [(e.key, e.self_cpu_time_total / 1e6 / n_iter) for e in top
                                   if not e.key.startswith("cat::")][:12]}


def profile_hooks(breakdown_factory: Callable[[], Breakdown], warmup: int, iters: int,
                  stamps: List[float], sink: Dict[str, Any]) -> Dict[int, Callable[[], None]]:
    """TimedLoader hooks that profile iterations ``warmup .. warmup + iters - 1``."""
    holder: Dict[str, Any] = {}

    def begin() -> None:
        holder["b"] = breakdown_factory()
        holder["t"] = time.perf_counter()
        holder["b"].start()

    def end() -> None:
        holder["b"].stop(iters, time.perf_counter() - holder["t"])
        sink.update(holder["b"].result)
    return {warmup: begin, warmup + iters: end}
