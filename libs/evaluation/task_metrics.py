"""Scoring a several-task model: per-task views of detections and ground truth, the mAP of each
task and the headline (the mean of the tasks' average mAPs, the unified track's ranking number).

Detections and ground truth use the joint label space (``libs/config/tasks.py``); a task's view
keeps the events whose joint label lies in the task's range, with task-local labels, and only the
videos that have the task's annotation (``dataset.allow_missing_task``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from libs.config.tasks import TaskLayout
from libs.datasets.task_annotations import task_records
from libs.evaluation.events import as_numpy, ground_truth_from_records, predictions_from_detections
from libs.evaluation.metrics import MetricResult, evaluate_map


def task_detections(detections: Sequence[Mapping[str, Any]], layout: TaskLayout, task: str,
                    video_ids: Optional[Sequence[str]] = None) -> List[dict]:
    """One task's detections per video (labels task-local), for the videos of ``video_ids``
    (all when None), in the given order."""
    lo, hi = layout.class_range(task)
    wanted = None if video_ids is None else set(video_ids)
    out = []
    for det in detections:
        if wanted is not None and det["video_id"] not in wanted:
            continue
        labels = as_numpy(det["labels"]).astype(np.int64).reshape(-1)
        keep = (labels >= lo) & (labels < hi)
        out.append({"video_id": det["video_id"],
                    "segments": as_numpy(det["segments"]).reshape(-1, 2)[keep],
                    "scores": as_numpy(det["scores"]).reshape(-1)[keep],
                    "labels": labels[keep] - lo})
    return out


@dataclass
class TaskMetrics:
    """The metric of each task (``results[task]``) and the headline ``average_map``."""
    tasks: List[str]
    results: Dict[str, MetricResult]

    @property
    def average_map(self) -> float:
        """The mean of the tasks' average mAPs (fraction)."""
        return float(np.mean([self.results[t].average_map for t in self.tasks]))

    def format_table(self, recall: bool = False) -> str:
        blocks = [f"[{t}]\n{self.results[t].format_table(recall)}" for t in self.tasks]
        mean = " + ".join(f"{100 * self.results[t].average_map:.2f}" for t in self.tasks)
        blocks.append(f"Mean of the tasks' average mAPs: {100 * self.average_map:.2f} (%) "
                      f"(({mean}) / {len(self.tasks)})")
        return "\n".join(blocks)

    def to_dict(self, task_label_names: Mapping[str, Mapping[int, str]]) -> Dict[str, Any]:
        return {"average_map": self.average_map,
                "headline": "mean of the tasks' average mAPs",
                "tasks": {t: self.results[t].to_dict(task_label_names.get(t, {}))
                          for t in self.tasks}}


def score_task_detections(detections: Sequence[Mapping[str, Any]], videos: Sequence[Any],
                          layout: TaskLayout) -> TaskMetrics:
    """The mAP of each task of ``detections`` against the ground truth of ``videos`` (the
    dataset's records, joint labels), on the videos annotated for that task."""
    results = {}
    for _, task, _, _ in layout:
        records = task_records(videos, layout, task)
        dets = task_detections(detections, layout, task, [v.video_id for v in records])
        results[task] = evaluate_map(ground_truth_from_records(records),
                                     predictions_from_detections(dets), where=f"task {task}")
    return TaskMetrics(list(layout.tasks), results)
