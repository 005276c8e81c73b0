"""The Perception Test dataset: annotations + multimodal features -> grid-cell training items.

Assembly (docs/numerics.md s.1.3, s.2): the primary modality's ``T`` rows set the grid; every other modality is
resampled linearly in time to ``rows_per_step * T`` rows and ``rows_per_step`` consecutive rows are
stacked as channels; channels are concatenated in config order; with ``force_upsampling`` the
``(C, T)`` features are resized to ``max_seq_len`` cells. Every feature file of the split is checked
when the dataset is built, and a video's data is never replaced by another video's.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Sequence, Set, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from libs.common.errors import UserError, format_problems
from libs.config.schema import Config, DatasetConfig

from .annotations import VideoRecord, load_annotations
from .crop import truncate_feats
from .features import FeatureSource
from .timegrid import TimeGrid, make_time_grid

logger = logging.getLogger(__name__)

ZERO_FILL_KINDS = ("missing", "unreadable")


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


class PerceptionDataset(Dataset):
    """Videos of ``splits`` with their assembled features (docs/numerics.md s.1-3; item layout in
    docs/architecture.md). ``set_epoch`` (or ``(epoch, index)`` keys from the loader's sampler)
    makes training crops depend only on ``(seed, epoch, index)``."""

    def __init__(self, dataset_cfg: DatasetConfig, *, task: str, seed: int, splits: Sequence[str],
                 is_training: bool) -> None:
        ds = dataset_cfg
        self.cfg_dataset = ds
        self.task = task
        self.seed = seed
        self.num_classes = ds.num_classes
        self.splits: List[str] = list(splits)
        self.is_training = bool(is_training)
        self.max_seq_len = ds.max_seq_len
        self.force_upsampling = ds.force_upsampling
        self.use_cache = ds.cache
        self.epoch = 0

        ann = load_annotations(ds.annotation_file, self.task, self.num_classes, self.splits,
                               end_tolerance=ds.end_tolerance)
        videos = ann.videos
        if self.is_training:
            kept = [v for v in videos if not (v.split == "test" and v.num_events == 0)]
            if len(kept) < len(videos):
                logger.info("training set: skipped %d test-split video(s) without events",
                            len(videos) - len(kept))
            if not kept:
                raise UserError(f"no training video with events (split(s) {', '.join(self.splits)}, "
                                f"{ds.annotation_file}): expected labelled videos")
            videos = kept
        self.videos: List[VideoRecord] = videos
        self.label_names: Dict[int, str] = ann.label_names

        self.modalities = ds.modalities
        self.primary = next(i for i, m in enumerate(ds.modalities) if m.primary)  # one, checked at load
        self.sources = [FeatureSource(m.name, m.path, m.ext, m.dim) for m in ds.modalities]
        self.zero_filled: List[Set[str]] = [set() for _ in ds.modalities]
        self._check_files(ds.on_missing)
        self._cache: Dict[int, Tuple[torch.Tensor, TimeGrid]] = {}

    @classmethod
    def from_config(cls, cfg: Config, splits: Sequence[str], is_training: bool) -> "PerceptionDataset":
        """The videos of ``splits`` of the config's dataset (``dataset``, ``task``, ``seed``)."""
        return cls(cfg.dataset, task=cfg.task, seed=cfg.seed, splits=splits, is_training=is_training)

    # -- checks -----------------------------------------------------------------------------------
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
            where = f"dataset.modalities, split(s) {', '.join(self.splits)}"
            raise UserError(format_problems(errors, f"{len(errors)} feature file problem(s) ({where})"))
        if filled:
            logger.warning("on_missing 'zeros': %d missing/unreadable feature file(s) filled with zeros (%s)",
                           sum(filled.values()), ", ".join(f"{k}: {n}" for k, n in filled.items()))

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
        """The video's ``(C, L)`` float32 features (before cropping) and its time grid."""
        if index in self._cache:
            return self._cache[index]
        rec = self.videos[index]
        vid = rec.video_id
        primary = self.sources[self.primary].read(vid)                          # (T, C_p)
        t = primary.shape[0]
        parts: List[np.ndarray] = []
        for i, (src, mod) in enumerate(zip(self.sources, self.modalities)):
            k = mod.rows_per_step
            if i == self.primary:
                parts.append(primary)
            elif vid in self.zero_filled[i]:
                parts.append(np.zeros((t, k * src.dim), dtype=np.float32))
            else:
                x = resample_rows(src.read(vid), k * t, mod.resample)          # (k*T, C_i)
                parts.append(stack_rows(x, t, k))                               # (T, k*C_i)
        feats = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1).T))  # (C, T)
        grid = make_time_grid(self.cfg_dataset, t, rec.duration)
        if self.force_upsampling and t != self.max_seq_len:
            feats = F.interpolate(feats[None], size=self.max_seq_len, mode="linear",
                                  align_corners=False)[0]                       # (C, max_seq_len)
        feats = feats.contiguous()
        if self.use_cache:
            self._cache[index] = (feats, grid)
        return feats, grid

    def prefill_cache(self) -> None:
        """Assemble every video once in this process, so that DataLoader workers started later
        share the filled cache (fork, copy-on-write) instead of each filling a copy of its own."""
        if not self.use_cache or len(self._cache) == len(self.videos):
            return
        start = time.time()
        for index in tqdm(range(len(self.videos)), desc="caching features", leave=False,
                          dynamic_ncols=True):
            self.assemble(index)
        nbytes = sum(f.numel() * f.element_size() for f, _ in self._cache.values())
        logger.info("cached the features of %d videos (%.1f MiB) in %.1f s", len(self._cache),
                    nbytes / 2 ** 20, time.time() - start)

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
        if self.use_cache and feats is self._cache.get(index, (None,))[0]:
            feats = feats.clone()  # callers may modify items in place; keep the cache intact
        return {
            "video_id": rec.video_id,
            "feats": feats,                                                     # (C, L) float32
            "segments": torch.from_numpy(np.asarray(segments, dtype=np.float32).reshape(-1, 2)),
            "labels": torch.from_numpy(np.array(labels, dtype=np.int64)),        # (N,)
            "duration": float(rec.duration),
            "grid": grid,
        }
