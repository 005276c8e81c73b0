"""Decoding and NMS per task (libs/evaluation/predict.py) and per-task scoring."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from libs.config.schema import NmsConfig
from libs.config import schema
from libs.config.tasks import TaskLayout
from libs.datasets.annotations import VideoRecord
from libs.datasets.timegrid import TimeGrid
from libs.evaluation.events import ground_truth_from_records, predictions_from_detections
from libs.evaluation.metrics import evaluate_map
from libs.evaluation.predict import predict
from libs.evaluation.task_metrics import score_task_detections, task_detections

TWO = ("action_localisation", "sound_localisation")
T = 16


class FixedHeads(nn.Module):
    """A stand-in detector: one pyramid level of T points (stride 1) and fixed head outputs."""

    def __init__(self, logits: torch.Tensor, offsets: torch.Tensor, task_num_classes, reg_per_task):
        super().__init__()
        self.logits, self.offsets_ = logits, offsets                  # (1, T, K), (1, T, 2 R)
        self.tasks = list(TWO[:len(task_num_classes)]) if len(task_num_classes) > 1 else [TWO[1]]
        self.task_num_classes = list(task_num_classes)
        self.reg_per_task = reg_per_task
        self.layout = TaskLayout(tuple(self.tasks), tuple(self.task_num_classes))
        self.point_generator = type("P", (), {"max_buffer_len": 1000})()

    def forward(self, feats, masks):
        t = torch.arange(T, dtype=torch.float32)
        points = torch.stack([t, torch.zeros(T), torch.full((T,), 1e4), torch.ones(T)], dim=1)
        return {"points": [points], "cls_logits": [self.logits], "offsets": [self.offsets_],
                "fpn_masks": [torch.ones(1, T, dtype=torch.bool)]}


def _batch():
    return [{"feats": torch.zeros(1, 1, T), "masks": torch.ones(1, 1, T, dtype=torch.bool),
             "video_ids": ["v"], "grids": [TimeGrid(1.0, 1.0, 0.0, float(T))]}]


def _test_cfg(**nms):
    return schema.TestCfgConfig(nms=dataclasses.replace(NmsConfig(), **nms))


def _logits(hot):
    """Logits (1, T, K): -20 everywhere but 5.0 at each (point, class) of ``hot``."""
    x = torch.full((1, T, 5), -20.0)
    for p, c in hot:
        x[0, p, c] = 5.0
    return x


def test_one_tasks_detections_never_suppress_anothers():
    # action class 1 and sound class 0 (joint 3) fire on the same point, same segment
    logits = _logits([(8, 1), (8, 3)])
    offsets = torch.full((1, T, 2), 2.0)
    cfg = _test_cfg(method="hard", multiclass=False, iou_threshold=0.1, voting_thresh=0.0)
    two = predict(FixedHeads(logits, offsets, (3, 2), False), _batch(), [cfg, cfg],
                  torch.device("cpu"), amp="none", show_progress=False)[0]
    assert sorted(two["labels"].tolist()) == [1, 3]                 # one per task kept
    one = predict(FixedHeads(logits, offsets, (5,), False), _batch(), cfg, torch.device("cpu"),
                  amp="none", show_progress=False)[0]
    assert len(one["labels"]) == 1                                  # one label space: suppressed


def test_each_task_uses_its_own_post_processing_and_regression_head():
    logits = _logits([(4, 0), (9, 0), (4, 3), (9, 3)])
    offsets = torch.cat([torch.full((1, T, 2), 1.0), torch.full((1, T, 2), 3.0)], dim=2)
    act, snd = _test_cfg(max_seg_num=1), _test_cfg(max_seg_num=5)
    det = predict(FixedHeads(logits, offsets, (3, 2), True), _batch(), [act, snd],
                  torch.device("cpu"), amp="none", show_progress=False)[0]
    labels = det["labels"].tolist()
    assert labels.count(0) == 1 and labels.count(3) == 2
    lengths = (det["segments"][:, 1] - det["segments"][:, 0]).tolist()
    assert [round(x) for x, lab in zip(lengths, labels) if lab == 0] == [2]       # act: 1 + 1
    assert [round(x) for x, lab in zip(lengths, labels) if lab == 3] == [6, 6]    # sound: 3 + 3


def test_score_task_detections_equals_scoring_each_task_alone():
    rng = np.random.default_rng(0)
    layout = TaskLayout(TWO, (3, 2))
    videos, dets = [], []
    for i in range(6):
        n = 4
        segs = np.sort(rng.uniform(0, 20, (n, 2)), axis=1)
        labels = np.array([0, 2, 3, 4])                              # 2 action, 2 sound events
        annotated = (True, i != 5)                                    # video 5: no sound list
        if i == 5:
            segs, labels = segs[:2], labels[:2]
        videos.append(VideoRecord(f"v{i}", "valid", 100, 5.0, 20.0, segs, labels, annotated))
        pred = segs + rng.normal(0, 0.5, segs.shape)
        dets.append({"video_id": f"v{i}", "segments": np.sort(pred, axis=1),
                     "scores": rng.uniform(0.1, 1, len(labels)), "labels": labels})
    dets[5]["labels"] = np.array([0, 3])        # a sound detection on the video without sound GT
    got = score_task_detections(dets, videos, layout)
    for task, (lo, hi) in (("action_localisation", (0, 3)), ("sound_localisation", (3, 5))):
        keep = [v for v in videos if v.is_annotated(layout.index(task))]
        gt = [VideoRecord(v.video_id, v.split, 100, 5.0, 20.0, v.segments[(v.labels >= lo) & (v.labels < hi)],
                          v.labels[(v.labels >= lo) & (v.labels < hi)] - lo) for v in keep]
        ids = {v.video_id for v in keep}
        pr = task_detections([d for d in dets if d["video_id"] in ids], layout, task)
        ref = evaluate_map(ground_truth_from_records(gt), predictions_from_detections(pr))
        assert got.results[task].average_map == ref.average_map
    assert got.average_map == np.mean([r.average_map for r in got.results.values()])
    assert "Mean of the tasks' average mAPs" in got.format_table()


def test_a_class_without_predictions_is_reported_with_its_task(caplog):
    layout = TaskLayout(TWO, (3, 2))
    segs = np.array([[1.0, 4.0], [6.0, 9.0]])
    videos = [VideoRecord("v0", "valid", 100, 5.0, 20.0, segs, np.array([1, 4]), (True, True))]
    # one action detection, no sound detection: sound class 1 (joint 4) has none
    dets = [{"video_id": "v0", "segments": segs[:1], "scores": np.array([0.9]), "labels": np.array([1])}]
    with caplog.at_level("WARNING", logger="libs.evaluation.metrics"):
        score_task_detections(dets, videos, layout)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == ["task sound_localisation: 1 class(es) with ground truth have no predictions "
                     "(AP 0): 1"]
