"""Tasks of a config: the joint label space of a unified (several-task) model, and per-task values.

A config localises one task (``task: sound_localisation``) or several with one model (``task:
[action_localisation, sound_localisation]``, README: unified model). The model predicts one
joint label space: the classes of each task, in task order, one after the other; task ``i``'s
class ``c`` is joint id ``class_offsets[i] + c`` (``derived.class_offsets``). With one task the
joint space is the task's own (offset 0), so nothing changes for single-task configs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from libs.config.loader import task_test_section
from libs.config.schema import Config, TestCfgConfig
from libs.config.spec import raise_if


@dataclass(frozen=True)
class TaskLayout:
    """The tasks of a model and where their classes lie in the joint label space."""
    tasks: Tuple[str, ...]
    num_classes: Tuple[int, ...]      # per task, task order

    @classmethod
    def from_config(cls, cfg: Config) -> "TaskLayout":
        return cls(tuple(cfg.derived.tasks), tuple(cfg.derived.task_num_classes))

    @classmethod
    def single(cls, task: str, num_classes: int) -> "TaskLayout":
        return cls((task,), (int(num_classes),))

    def __post_init__(self) -> None:
        assert len(self.tasks) == len(self.num_classes) >= 1, (self.tasks, self.num_classes)

    @property
    def multi(self) -> bool:
        return len(self.tasks) > 1

    @property
    def offsets(self) -> Tuple[int, ...]:
        return tuple(int(sum(self.num_classes[:i])) for i in range(len(self.tasks)))

    @property
    def total_classes(self) -> int:
        return int(sum(self.num_classes))

    def index(self, task: str) -> int:
        return self.tasks.index(task)

    def class_range(self, task: str) -> Tuple[int, int]:
        """Joint ids ``[lo, hi)`` of ``task``'s classes."""
        i = self.index(task)
        return self.offsets[i], self.offsets[i] + self.num_classes[i]

    def __iter__(self) -> Iterator[Tuple[int, str, int, int]]:
        """``(index, task, offset, num_classes)`` per task, in task order."""
        for i, (task, n) in enumerate(zip(self.tasks, self.num_classes)):
            yield i, task, self.offsets[i], n

    def task_of(self, labels: np.ndarray) -> np.ndarray:
        """Task index of each joint label id, ``(N,) -> (N,)`` int64."""
        bounds = np.asarray(self.offsets[1:], dtype=np.int64)
        return np.searchsorted(bounds, np.asarray(labels, dtype=np.int64), side="right")

    def joint_label_names(self, per_task: Dict[str, Dict[int, str]]) -> Dict[int, str]:
        """Per-task label maps -> one map of joint ids (one task: the same map)."""
        out: Dict[int, str] = {}
        for _, task, offset, _ in self:
            for lid, name in per_task.get(task, {}).items():
                out[offset + int(lid)] = name
        return out

    def describe(self) -> str:
        return ", ".join(f"{t} ({n} classes)" for t, n in zip(self.tasks, self.num_classes))


def task_values(value: Any, tasks: Sequence[str]) -> List[Any]:
    """A per-task key's value (one value for every task, or ``{task: value}``) per task."""
    if isinstance(value, dict):
        return [value[t] for t in tasks]
    return [value for _ in tasks]


def task_test_cfg(cfg: Config, task: str) -> TestCfgConfig:
    """``cfg.test_cfg`` with ``test_cfg.per_task[task]`` applied (checked at load); without an
    override the shared section itself."""
    overlay = (cfg.test_cfg.per_task or {}).get(task)
    if not overlay:
        return cfg.test_cfg
    from libs.config.loader import _build   # the section's dataclass from its checked dict
    errs: List[str] = []
    shared = cfg.to_dict()["test_cfg"]
    values = task_test_section(shared, overlay, f"test_cfg.per_task.{task}", cfg.source, errs)
    raise_if(errs, cfg.source)
    values.update({k: shared[k] for k in shared if k not in values})
    return _build(TestCfgConfig, values)
