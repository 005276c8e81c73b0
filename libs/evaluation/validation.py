"""Predict a split and score it: shared by eval.py and validation during training."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from libs.evaluation.predict import predict
from libs.datasets import PerceptionDataset, make_loader
from libs.evaluation.metrics import (MetricResult, evaluate_map, ground_truth_from_records,
                                predictions_from_detections)


def predict_dataset(model: nn.Module, dataset: PerceptionDataset, cfg: dict, device: torch.device,
                    max_div_factor: int, test_cfg: Optional[dict] = None, raw_hook=None,
                    show_progress: bool = True) -> List[dict]:
    """Detections (seconds) for every video of ``dataset``, in dataset order."""
    loader = make_loader(dataset, batch_size=cfg["loader"]["eval_batch_size"],
                         num_workers=cfg["loader"]["num_workers"], is_training=False, seed=cfg["seed"],
                         max_seq_len=cfg["dataset"]["max_seq_len"], max_div_factor=max_div_factor)
    return predict(model, loader, test_cfg or cfg["test_cfg"], device, raw_hook=raw_hook,
                   show_progress=show_progress)


def score_detections(detections: List[dict], dataset: PerceptionDataset) -> MetricResult:
    """mAP of ``detections`` against the dataset's ground truth (SPEC s.6)."""
    gt = ground_truth_from_records(dataset.videos)
    return evaluate_map(gt, predictions_from_detections(detections))


def evaluate_model(model: nn.Module, dataset: PerceptionDataset, cfg: dict, device: torch.device,
                   max_div_factor: int) -> MetricResult:
    """Validation during training: predict the split and return its metrics."""
    detections = predict_dataset(model, dataset, cfg, device, max_div_factor, show_progress=False)
    return score_detections(detections, dataset)


def split_tag(splits: List[str]) -> str:
    return "_".join(splits)


def default_output_paths(ckpt_dir, splits: List[str], epoch: int) -> Tuple[str, str]:
    stem = f"{split_tag(splits)}_epoch_{epoch:03d}"
    return str(ckpt_dir / f"{stem}_results.json"), str(ckpt_dir / f"{stem}_metrics.json")
