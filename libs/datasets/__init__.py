"""Perception Test data pipeline: annotations, feature files, time grid, dataset, batching."""
from .annotations import AnnotationSet, VideoRecord, load_annotations
from .collate import collate_batch, padded_length
from .crop import truncate_feats
from .features import FeatureProblem, FeatureSource
from .loader import EpochSampler, make_loader, set_loader_epoch
from .perception import PerceptionDataset, resample_rows, stack_rows
from .task_annotations import load_task_annotations, task_records
from .timegrid import TimeGrid, make_time_grid

__all__ = [
    "AnnotationSet", "VideoRecord", "load_annotations",
    "collate_batch", "padded_length",
    "truncate_feats",
    "FeatureProblem", "FeatureSource",
    "EpochSampler", "make_loader", "set_loader_epoch",
    "PerceptionDataset", "resample_rows", "stack_rows",
    "load_task_annotations", "task_records",
    "TimeGrid", "make_time_grid",
]
