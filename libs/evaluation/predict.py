"""Inference: decode per level, NMS, grid cells -> seconds; predicting and scoring a split.

Shared by eval.py, validation during training and the tools.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from libs.common.distributed import unwrap_model
from libs.common.errors import UserError
from libs.modeling.decode import decode_candidates
from libs.config.schema import Config, NmsConfig, TestCfgConfig
from libs.datasets import PerceptionDataset, make_loader
from libs.evaluation.metrics import MetricResult, evaluate_map
from libs.evaluation.events import ground_truth_from_records, predictions_from_detections
from libs.ops.nms import batched_nms_videos

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model: nn.Module, loader, test_cfg: TestCfgConfig, device: torch.device,
            raw_hook: Optional[Callable[[str, dict, object], None]] = None,
            show_progress: bool = True) -> List[dict]:
    """Detections for every video of ``loader``: decode per level, NMS, grid cells -> seconds.

    Returns one dict per video in loader order: ``video_id``, ``segments`` (N, 2) float32
    seconds clipped to [0, duration], ``scores`` (N,), ``labels`` (N,) int64, descending score.
    ``raw_hook(video_id, candidates, grid)`` receives the pre-NMS candidates (grid cells).
    """
    model.eval()
    core = unwrap_model(model)
    nms_kwargs = dataclasses.asdict(test_cfg.nms)
    on_gpu = device.type == "cuda" and test_cfg.nms.backend in ("auto", "cuda")
    limit = core.point_generator.max_buffer_len  # longest input (grid cells) the points cover
    results: List[dict] = []
    start = time.time()
    for batch in tqdm(loader, desc="inference", leave=False, disable=not show_progress,
                      dynamic_ncols=True):
        if batch["feats"].shape[-1] > limit:
            lengths = batch["masks"].sum(dim=(1, 2)).tolist()
            long = [f"{v} ({int(n)} cells)" for v, n in zip(batch["video_ids"], lengths) if n > limit]
            raise UserError(f"video too long for the model ({', '.join(long) or batch['video_ids'][0]}): "
                            f"expected at most {limit:g} grid cells (dataset.max_seq_len x "
                            f"model.max_buffer_len_factor); raise model.max_buffer_len_factor or use "
                            f"dataset.force_upsampling")
        feats = batch["feats"].to(device, non_blocking=True)
        masks = batch["masks"].to(device, non_blocking=True)
        outputs = core(feats, masks)
        candidates = decode_candidates(
            outputs["points"], outputs["cls_logits"], outputs["offsets"], outputs["fpn_masks"],
            test_cfg.pre_nms_thresh, test_cfg.pre_nms_topk, test_cfg.duration_thresh)
        if not on_gpu:
            candidates = [{k: v.cpu() for k, v in c.items()} for c in candidates]
        if raw_hook is not None:
            for vid, cand, grid in zip(batch["video_ids"], candidates, batch["grids"]):
                raw_hook(vid, cand, grid)
        kept = batched_nms_videos(
            [(c["segments"], c["scores"], c["labels"]) for c in candidates], **nms_kwargs)
        for vid, grid, (segs, scores, labels) in zip(batch["video_ids"], batch["grids"], kept):
            seconds = grid.clip_seconds(grid.to_seconds(segs.float().cpu()))
            results.append({"video_id": vid, "segments": seconds, "scores": scores.float().cpu(),
                            "labels": labels.long().cpu()})
    log.info("inference: %d videos in %.2f s", len(results), time.time() - start)
    return results


def nms_settings_summary(nms: NmsConfig) -> str:
    """One line describing the post-processing, for logs."""
    return (f"NMS {nms.method} (sigma {nms.sigma}, iou {nms.iou_threshold}), "
            f"{'per class' if nms.multiclass else 'class-agnostic'}, min score {nms.min_score}, "
            f"max {nms.max_seg_num} per video, backend {nms.backend}")


def predict_dataset(model: nn.Module, dataset: PerceptionDataset, cfg: Config, device: torch.device,
                    raw_hook=None, show_progress: bool = True) -> List[dict]:
    """Detections (seconds) for every video of ``dataset``, in dataset order (``cfg.loader``
    batching, ``cfg.test_cfg`` post-processing; inputs padded to the model's max_div_factor)."""
    loader = make_loader(dataset, batch_size=cfg.loader.eval_batch_size,
                         num_workers=cfg.loader.num_workers, is_training=False, seed=cfg.seed,
                         max_seq_len=cfg.dataset.max_seq_len,
                         max_div_factor=unwrap_model(model).max_div_factor)
    return predict(model, loader, cfg.test_cfg, device, raw_hook=raw_hook,
                   show_progress=show_progress)


def score_detections(detections: List[dict], dataset: PerceptionDataset) -> MetricResult:
    """mAP of ``detections`` against the dataset's ground truth."""
    gt = ground_truth_from_records(dataset.videos)
    return evaluate_map(gt, predictions_from_detections(detections))
