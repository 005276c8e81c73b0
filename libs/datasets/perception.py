"""The Perception Test dataset: annotations + multimodal features -> grid-cell training items.

Assembly (docs/numerics.md s.1.3, s.2): the primary modality's ``T`` rows set the grid; every other modality is
resampled linearly in time to ``rows_per_step * T`` rows and ``rows_per_step`` consecutive rows are
stacked as channels; channels are concatenated in config order; with ``force_upsampling`` the
``(C, T)`` features are resized to ``max_seq_len`` cells. Every feature file's header (shape) is
checked when the dataset is built; its values at the video's first read (NaN/inf are an error
naming video, modality and file, or zeroed: ``dataset.on_nonfinite``; ``check_values`` reads them
all up front), and a video's data is never replaced by another video's. Assembled inputs are kept
in the shared, bounded cache of ``libs/datasets/cache.py`` (``dataset.cache``).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from libs.common.errors import UserError, format_problems
from libs.config.schema import Config, DatasetConfig
from libs.config.tasks import TaskLayout

from .annotations import AnnotationSet, VideoRecord
from .task_annotations import load_task_annotations
from .cache import GB, FeatureCache, ReadError, round_to
from .crop import truncate_feats
from .features import FeatureProblem, FeatureSource, nonfinite_rows
from .timegrid import TimeGrid, make_time_grid

logger = logging.getLogger(__name__)

ZERO_FILL_KINDS = ("missing", "unreadable")
NONFINITE_HINT = "dataset.on_nonfinite: zero replaces NaN/inf by 0"


def resample_rows(x: np.ndarray, n: int, mode: str = "endpoint") -> np.ndarray:
    """Linearly resample ``x (T_m, C)`` in time to ``(n, C)`` float32.

    'endpoint': sample points ``linspace(0, T_m - 1, n)`` (first and last rows aligned, the
    original's interp1d); a 1-row input is repeated. 'centre': ``F.interpolate(linear,
    align_corners=False)``.
    """
    t_m = x.shape[0]
    if mode == "centre":
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).T)[None]  # (1, C, T_m)
        out = F.interpolate(xt, size=n, mode="linear", align_corners=False)[0]   # (C, n)
        return np.ascontiguousarray(out.T.numpy())
    assert mode == "endpoint", mode
    if t_m == 1:
        return np.repeat(x.astype(np.float32, copy=False), n, axis=0)
    pos = np.linspace(0.0, t_m - 1.0, n)                                        # (n,)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, t_m - 2)                    # (n,)
    w = (pos - lo)[:, None]                                                     # (n, 1)
    x64 = x.astype(np.float64, copy=False)
    out = x64[lo] + w * (x64[lo + 1] - x64[lo])                                # (n, C)
    return out.astype(np.float32)


def stack_rows(x: np.ndarray, t: int, k: int) -> np.ndarray:
    """``(k*t, C) -> (t, k*C)``: row i is ``[x[k*i] | x[k*i+1] | ... | x[k*i+k-1]]``."""
    assert x.shape[0] == k * t, (x.shape, k, t)
    return x.reshape(t, k * x.shape[1])


def assemble_arrays(arrays: Sequence[Optional[np.ndarray]], dataset_cfg: DatasetConfig,
                    duration: float) -> Tuple[torch.Tensor, TimeGrid]:
    """One video's modality arrays -> its ``(C, L)`` float32 features and time grid
    (docs/numerics.md s.1.3, s.2).

    ``arrays[i]`` is modality ``i``'s ``(T_i, dim_i)`` array in ``dataset_cfg.modalities`` order,
    or None for a zero-filled (missing, non-primary) modality; ``duration`` is in seconds.
    """
    mods = dataset_cfg.modalities
    primary_index = next(i for i, m in enumerate(mods) if m.primary)   # one, checked at load
    primary = arrays[primary_index]
    assert primary is not None, "the primary modality is never zero-filled"
    t = primary.shape[0]
    parts: List[np.ndarray] = []
    for i, (x, mod) in enumerate(zip(arrays, mods)):
        k = mod.rows_per_step
        if i == primary_index:
            parts.append(np.asarray(x, dtype=np.float32))
        elif x is None:
            parts.append(np.zeros((t, k * mod.dim), dtype=np.float32))
        else:
            x = resample_rows(x, k * t, mod.resample)                          # (k*T, C_i)
            parts.append(stack_rows(x, t, k))                                   # (T, k*C_i)
    feats = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1).T))  # (C, T)
    grid = make_time_grid(dataset_cfg, t, duration)
    if dataset_cfg.force_upsampling and t != dataset_cfg.max_seq_len:
        feats = F.interpolate(feats[None], size=dataset_cfg.max_seq_len, mode="linear",
                              align_corners=False)[0]                           # (C, max_seq_len)
    return feats.contiguous(), grid


class PerceptionDataset(Dataset):
    """Videos of ``splits`` with their assembled features (docs/numerics.md s.1-3; item layout in
    docs/architecture.md). ``set_epoch`` (or ``(epoch, index)`` keys from the loader's sampler)
    makes training crops depend only on ``(seed, epoch, index)``."""

    def __init__(self, dataset_cfg: DatasetConfig, *, task: str, seed: int, splits: Sequence[str],
                 is_training: bool, annotations: Optional[AnnotationSet] = None,
                 show_progress: bool = True) -> None:
        """``annotations``: the videos to use (e.g. new videos without an annotation file, see
        ``libs/datasets/newvideos.py``); None reads ``dataset.annotation_file`` for ``splits``."""
        ds = dataset_cfg
        self.cfg_dataset = ds
        self.task = task
        self.tasks: List[str] = [task] if isinstance(task, str) else list(task)
        n = ds.num_classes
        self.task_num_classes = [n[t] for t in self.tasks] if isinstance(n, dict) else [n]
        self.seed = seed
        self.layout = TaskLayout(tuple(self.tasks), tuple(self.task_num_classes))
        self.num_classes = self.layout.total_classes     # the joint label space
        self.splits: List[str] = list(splits)
        self.is_training = bool(is_training)
        self.max_seq_len = ds.max_seq_len
        self.force_upsampling = ds.force_upsampling
        self.on_nonfinite = ds.on_nonfinite
        self.epoch = 0

        ann = annotations if annotations is not None else load_task_annotations(
            ds.annotation_file, self.tasks, self.task_num_classes, self.splits,
            end_tolerance=ds.end_tolerance, allow_missing_task=ds.allow_missing_task)
        self.annotation_source = ann.path
        videos = ann.videos
        if self.is_training:
            kept = [v for v in videos if not (v.split == "test" and v.num_events == 0)]
            if len(kept) < len(videos):
                logger.info("training set: skipped %d test-split video(s) without events",
                            len(videos) - len(kept))
            if not kept:
                raise UserError(f"no training video with events (split(s) {', '.join(self.splits)}, "
                                f"{ann.path}): expected labelled videos")
            videos = kept
        self.videos: List[VideoRecord] = videos
        self.label_names: Dict[int, str] = ann.label_names          # joint ids with several tasks
        self.task_label_names: Dict[str, Dict[int, str]] = ann.task_label_names

        self.modalities = ds.modalities
        self.primary = next(i for i, m in enumerate(ds.modalities) if m.primary)  # one, checked at load
        self.sources = [FeatureSource(m.name, m.path, m.ext, m.dim) for m in ds.modalities]
        self.zero_filled: List[Set[str]] = [set() for _ in ds.modalities]
        # per modality: {video id: rows holding NaN/inf} (replaced by 0 with on_nonfinite 'zero')
        self.nonfinite: List[Dict[str, int]] = [{} for _ in ds.modalities]
        self._check_files(ds.on_missing)
        # values are checked at each video's first read (or all at once: check_values)
        self.cache: Optional[FeatureCache] = self._make_cache() if ds.cache else None
        self.use_cache = self.cache is not None and self.cache.count > 0

    @classmethod
    def from_config(cls, cfg: Config, splits: Sequence[str], is_training: bool) -> "PerceptionDataset":
        """The videos of ``splits`` of the config's dataset (``dataset``, ``task``, ``seed``)."""
        return cls(cfg.dataset, task=cfg.task, seed=cfg.seed, splits=splits, is_training=is_training)

    # -- checks -----------------------------------------------------------------------------------
    def _where(self) -> str:
        return (f"dataset.modalities, split(s) {', '.join(self.splits)}" if self.splits
                else f"dataset.modalities, {self.annotation_source}")

    def _check_files(self, on_missing: str) -> None:
        """Check every file of every modality; raise one UserError or fill zeros (non-primary)."""
        ids = [v.video_id for v in self.videos]
        errors: List[str] = []
        filled: Dict[str, int] = {}
        for i, src in enumerate(self.sources):
            for prob in src.check(ids):
                if on_missing == "zeros" and i != self.primary and prob.kind in ZERO_FILL_KINDS:
                    self.zero_filled[i].add(prob.video_id)
                    filled[src.name] = filled.get(src.name, 0) + 1
                else:
                    errors.append(str(prob))
            src.close()  # workers reopen h5 files lazily in their own process
        if errors:
            errors = list(dict.fromkeys(errors))  # an absent .h5 file is one problem, not one per video
            raise UserError(format_problems(errors, f"{len(errors)} feature file problem(s) "
                                                    f"({self._where()})"))
        if filled:
            logger.warning("on_missing 'zeros': %d missing/unreadable feature file(s) filled with zeros (%s)",
                           sum(filled.values()), ", ".join(f"{k}: {n}" for k, n in filled.items()))

    def check_values(self, show_progress: bool = True) -> None:
        """Read every feature file of the split now and count the rows holding NaN/inf
        (docs/numerics.md s.1.2): one error listing every bad video with modality, file and count
        (``on_nonfinite: error``), or replaced by 0 and the counts logged (``zero``). Items check
        their own values at their first read anyway; this is the up-front pass of
        ``tools/summarize_dataset.py`` (it fills ``self.nonfinite``, not the cache)."""
        start = time.time()
        errors: List[str] = []
        for index in tqdm(range(len(self.videos)), desc="checking feature values", leave=False,
                          dynamic_ncols=True, disable=not show_progress):
            try:
                arrays = self._read_modalities(index, check=False)
            except FeatureProblem as prob:   # a file whose header read but whose data does not
                errors.append(str(prob))
                continue
            vid = self.videos[index].video_id
            for i, src in enumerate(self.sources):
                bad = self.nonfinite[i].get(vid)
                if bad and self.on_nonfinite == "error":
                    errors.append(f"non-finite values ({src.where(vid)}): {bad} of "
                                  f"{arrays[i].shape[0]} rows hold NaN or inf in {src.file_for(vid)}")
        for src in self.sources:
            src.close()
        if errors:
            raise UserError(format_problems(errors, f"{len(errors)} feature file problem(s) "
                                                    f"({self._where()}); {NONFINITE_HINT}"))
        counts = {src.name: (len(self.nonfinite[i]), sum(self.nonfinite[i].values()))
                  for i, src in enumerate(self.sources) if self.nonfinite[i]}
        if counts:
            logger.warning("on_nonfinite 'zero': NaN/inf replaced by 0 in %s",
                           ", ".join(f"{k}: {r} rows of {v} video(s)" for k, (v, r) in counts.items()))
        logger.info("feature values of %d videos checked in %.1f s", len(self.videos),
                    time.time() - start)

    def _make_cache(self) -> FeatureCache:
        """The split's shared feature cache (``libs/datasets/cache.py``), allocated, not filled."""
        ds = self.cfg_dataset
        channels = sum(m.dim * m.rows_per_step for m in ds.modalities)
        lengths = [self.grid_length(i) for i in range(len(self.videos))]          # header reads
        max_bytes = None if ds.cache_max_gb is None else ds.cache_max_gb * GB
        cache = FeatureCache(channels=channels, lengths=lengths, dtype=ds.cache_dtype,
                             max_bytes=max_bytes)
        self.sources[self.primary].close()
        logger.info("%s (%s)", cache.describe(), self._where())
        return cache

    def _read_modalities(self, index: int, check: bool) -> List[Optional[np.ndarray]]:
        """The video's ``(T_i, dim_i)`` array per modality (None: zero-filled); non-finite values
        are counted in ``self.nonfinite`` and, with ``on_nonfinite: zero``, replaced by 0 (logged
        once per video and process when ``check``). ``check``: NaN/inf with ``on_nonfinite:
        error`` raise a :class:`ReadError` naming video, modality, file and count."""
        vid = self.videos[index].video_id
        arrays: List[Optional[np.ndarray]] = []
        for i, src in enumerate(self.sources):
            if vid in self.zero_filled[i]:
                arrays.append(None)
                continue
            x = src.read(vid)                                                   # (T_i, dim_i)
            bad_rows = nonfinite_rows(x)
            if bad_rows:
                where = (f"non-finite values ({src.where(vid)}): {bad_rows} of {x.shape[0]} rows "
                         f"hold NaN or inf in {src.file_for(vid)}")
                if check and self.on_nonfinite == "error":
                    raise ReadError(f"{where}; {NONFINITE_HINT}")
                if check and vid not in self.nonfinite[i]:
                    logger.warning("on_nonfinite 'zero': %s, replaced by 0", where)
                self.nonfinite[i][vid] = bad_rows
                if self.on_nonfinite == "zero":
                    x = np.where(np.isfinite(x), x, np.float32(0.0))
            arrays.append(x)
        return arrays

    # -- assembly ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Training crops of this epoch are drawn from ``default_rng([seed, epoch, index])``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def grid_length(self, index: int) -> int:
        """Grid cells of the video's assembled features, without assembling them."""
        if self.force_upsampling:
            return self.max_seq_len
        return int(self.sources[self.primary].shape(self.videos[index].video_id)[0])

    def assemble(self, index: int) -> Tuple[torch.Tensor, TimeGrid]:
        """The video's ``(C, L)`` float32 features (before cropping; a tensor of its own, rounded
        to ``dataset.cache_dtype``) and its time grid: from the cache, or read, checked
        (NaN/inf: :class:`ReadError`) and written to the cache if it has room for the video."""
        rec = self.videos[index]
        hit = self.cache.get(index) if self.cache is not None else None
        if hit is not None:
            feats, rows = hit
            return feats, make_time_grid(self.cfg_dataset, rows, rec.duration)
        try:
            arrays = self._read_modalities(index, check=True)
        except FeatureProblem as prob:       # e.g. a file removed since the header check
            raise ReadError(str(prob)) from None
        feats, grid = assemble_arrays(arrays, self.cfg_dataset, rec.duration)
        feats = round_to(feats, self.cfg_dataset.cache_dtype)
        if self.cfg_dataset.cache_dtype == "float16" and not bool(torch.isfinite(feats).all()):
            raise ReadError(f"features beyond the float16 range ({self._where()}, video "
                            f"'{rec.video_id}'): |x| > 65504 rounds to inf; expected "
                            "dataset.cache_dtype float32 or bfloat16 for these features")
        if self.cache is not None:
            self.cache.put(index, feats, arrays[self.primary].shape[0])
        return feats, grid

    def prefill_cache(self) -> None:
        """Nothing to do before the loader's workers start: the cache is one shared-memory tensor
        allocated when the dataset is built, and whichever process reads a video first writes
        it there for all (``libs/datasets/cache.py``)."""

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        if isinstance(key, (tuple, list)):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(key)
        rec = self.videos[index]
        feats, grid = self.assemble(index)
        segments = grid.to_grid(rec.segments)                                   # (N, 2) float64 cells
        labels = rec.labels
        if self.is_training:
            ds = self.cfg_dataset
            rng = np.random.default_rng([self.seed, epoch, index])
            feats, segments, labels = truncate_feats(
                feats, segments, labels, self.max_seq_len, ds.trunc_thresh, ds.crop_ratio,
                grid.offset, rng)
        return {
            "video_id": rec.video_id,
            "feats": feats,                                                     # (C, L) float32
            "segments": torch.from_numpy(np.asarray(segments, dtype=np.float32).reshape(-1, 2)),
            "labels": torch.from_numpy(np.array(labels, dtype=np.int64)),        # (N,)
            "duration": float(rec.duration),
            "grid": grid,
            # per task: does this video have the task's annotation (dataset.allow_missing_task)
            "annotated": torch.tensor(rec.annotated or (True,) * len(self.tasks)),
        }
