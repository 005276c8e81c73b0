"""Inference: decode per level, NMS, grid cells -> seconds; predicting and scoring a split.

Shared by eval.py, validation during training and the tools. Under torch.distributed (torchrun)
:func:`predict_dataset` splits the split's videos across the processes and gathers the detections
to rank 0 (README: scaling); without a process group it is a plain single-process loop.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from libs.common.distributed import (autocast, gather_to_main, is_distributed, rank_and_world,
                                     unwrap_model)
from libs.common.errors import UserError
from libs.modeling.decode import decode_candidates
from libs.modeling.multitask import task_head_outputs
from libs.config.schema import Config, NmsConfig, TestCfgConfig
from libs.config.tasks import task_test_cfg
from libs.datasets import PerceptionDataset, make_loader
from libs.datasets.loader import length_grouped_batches
from libs.evaluation.metrics import MetricResult, evaluate_map
from libs.evaluation.events import ground_truth_from_records, predictions_from_detections
from libs.evaluation.task_metrics import TaskMetrics, score_task_detections
from libs.ops.nms import batched_nms_videos

log = logging.getLogger(__name__)


def _decode_and_nms(outputs: dict, test_cfg: TestCfgConfig, on_gpu: bool,
                    cls_logits: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
                    label_offset: int = 0) -> Tuple[List[dict], list]:
    """One task's pre-NMS candidates per video and its NMS result ``(segs, scores, labels)``
    per video (labels shifted by ``label_offset`` into the joint label space)."""
    candidates = decode_candidates(
        outputs["points"], [x.float() for x in cls_logits], [x.float() for x in offsets],
        outputs["fpn_masks"], test_cfg.pre_nms_thresh, test_cfg.pre_nms_topk,
        test_cfg.duration_thresh)
    if not on_gpu:
        candidates = [{k: v.cpu() for k, v in c.items()} for c in candidates]
    if label_offset:
        for c in candidates:
            c["labels"] = c["labels"] + label_offset
    kept = batched_nms_videos([(c["segments"], c["scores"], c["labels"]) for c in candidates],
                              **dataclasses.asdict(test_cfg.nms))
    return candidates, kept


@torch.no_grad()
def predict(model: nn.Module, loader, test_cfg: Union[TestCfgConfig, Sequence[TestCfgConfig]],
            device: torch.device, *, amp: str,
            raw_hook: Optional[Callable[[str, dict, object], None]] = None,
            show_progress: bool = True) -> List[dict]:
    """Detections for every video of ``loader``: decode per level, NMS, grid cells -> seconds.

    Returns one dict per video in loader order: ``video_id``, ``segments`` (N, 2) float32
    seconds clipped to [0, duration], ``scores`` (N,), ``labels`` (N,) int64, descending score
    (several tasks: each task's detections in task order, labels in the joint label space).
    ``test_cfg``: the post-processing, or one per task of the model (decoding and NMS run per
    task: one task's detections never suppress another's).
    ``raw_hook(video_id, candidates, grid)`` receives the pre-NMS candidates (grid cells).
    ``amp`` ('none', 'bf16', 'fp16') is the forward pass's autocast; the head outputs are cast
    to fp32 before decoding, so scores are never rounded to 8 mantissa bits before NMS.
    """
    model.eval()
    core = unwrap_model(model)
    layout = core.layout
    cfgs = list(test_cfg) if isinstance(test_cfg, (list, tuple)) else [test_cfg] * len(layout.tasks)
    assert len(cfgs) == len(layout.tasks), "one test_cfg per task"
    on_gpu = device.type == "cuda" and all(c.nms.backend in ("auto", "cuda") for c in cfgs)
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
        with autocast(amp, device):
            outputs = core(feats, masks)
        if not layout.multi:
            candidates, kept = _decode_and_nms(outputs, cfgs[0], on_gpu, outputs["cls_logits"],
                                               outputs["offsets"])
        else:
            per_task = [_decode_and_nms(outputs, tc, on_gpu, cls, off, lo) for (cls, off), tc, lo in
                        zip(task_head_outputs(outputs, layout, core.reg_per_task), cfgs,
                            layout.offsets)]
            videos = range(len(batch["video_ids"]))     # each video: the tasks in task order
            candidates = [{k: torch.cat([cands[b][k] for cands, _ in per_task])
                           for k in per_task[0][0][b]} for b in videos]
            kept = [tuple(torch.cat([nms[b][j] for _, nms in per_task]) for j in range(3))
                    for b in videos]
        if raw_hook is not None:
            for vid, cand, grid in zip(batch["video_ids"], candidates, batch["grids"]):
                raw_hook(vid, cand, grid)
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


class DatasetShard(Dataset):
    """Videos ``[start, stop)`` of a :class:`PerceptionDataset` with the interface the inference
    loader uses (items, ``grid_length``, ``prefill_cache`` of these videos only)."""

    def __init__(self, dataset: PerceptionDataset, start: int, stop: int) -> None:
        assert 0 <= start <= stop <= len(dataset), (start, stop, len(dataset))
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.dataset[self.start + int(index)]

    def grid_length(self, index: int) -> int:
        return self.dataset.grid_length(self.start + index)

    def prefill_cache(self) -> None:
        if self.dataset.use_cache:
            for index in range(self.start, self.stop):
                self.dataset.assemble(index)


def shard_ranges(batch_sizes: Sequence[int], world_size: int) -> List[Tuple[int, int]]:
    """Per process, the video range ``[start, stop)``: contiguous runs of whole inference batches
    (``batch_sizes`` in dataset order) with about ``N / world_size`` videos each. A run that starts
    at a batch boundary is grouped into the same batches as in one process (the length grouping
    is a left-to-right scan), so the detections do not depend on the number of processes."""
    ends = np.concatenate([[0], np.cumsum(np.asarray(batch_sizes, dtype=np.int64))])  # (nb + 1,)
    total = int(ends[-1])
    cuts = [0]
    for r in range(1, world_size):
        nearest = int(ends[np.argmin(np.abs(ends - total * r / world_size))])
        cuts.append(max(nearest, cuts[-1]))
    cuts.append(total)
    return list(zip(cuts[:-1], cuts[1:]))


def predict_dataset(model: nn.Module, dataset: PerceptionDataset, cfg: Config, device: torch.device,
                    *, amp: str, raw_hook=None, show_progress: bool = True) -> Optional[List[dict]]:
    """Detections (seconds) for every video of ``dataset``, in dataset order (``cfg.loader``
    batching, ``cfg.test_cfg`` post-processing; inputs padded to the model's max_div_factor;
    ``amp`` as in :func:`predict`).

    Under torch.distributed every process must call it: each predicts its :func:`shard_ranges`
    share (``raw_hook`` runs where a video is predicted), rank 0 returns all detections and the
    other ranks return None. The result equals a single-process run's.
    """
    distributed, (rank, world) = is_distributed(), rank_and_world()
    max_div = unwrap_model(model).max_div_factor
    part: Any = dataset
    if distributed:
        batches = length_grouped_batches(dataset, cfg.loader.eval_batch_size,
                                         cfg.dataset.max_seq_len, max_div)
        start, stop = shard_ranges([len(b) for b in batches], world)[rank]
        part = DatasetShard(dataset, start, stop)
        log.info("process %d of %d predicts videos %d-%d of %d", rank, world, start, stop - 1,
                 len(dataset))
    loader = make_loader(part, batch_size=cfg.loader.eval_batch_size,
                         num_workers=cfg.loader.num_workers, is_training=False, seed=cfg.seed,
                         max_seq_len=cfg.dataset.max_seq_len, max_div_factor=max_div)
    test_cfgs = [task_test_cfg(cfg, t) for t in unwrap_model(model).tasks]
    detections = predict(model, loader, test_cfgs, device, amp=amp, raw_hook=raw_hook,
                         show_progress=show_progress and rank == 0)
    if not distributed:
        return detections
    parts = gather_to_main(detections, "gathering the detections to rank 0")
    if parts is None:
        return None
    merged = [d for p in parts for d in p]
    assert [d["video_id"] for d in merged] == [v.video_id for v in dataset.videos]
    return merged


def score_detections(detections: List[dict], dataset: PerceptionDataset
                     ) -> Union[MetricResult, TaskMetrics]:
    """mAP of ``detections`` against the dataset's ground truth; several tasks: per task, with
    the headline ``average_map`` (``libs/evaluation/task_metrics.py``)."""
    layout = dataset.layout
    if layout.multi:
        return score_task_detections(detections, dataset.videos, layout)
    gt = ground_truth_from_records(dataset.videos)
    return evaluate_map(gt, predictions_from_detections(detections))
