"""The Perception Test dataset: annotations + multimodal features -> grid-cell training items.

Assembly (docs/numerics.md s.1.3, s.2): the primary modality's ``T`` rows set the grid; every other modality is
resampled linearly in time to ``rows_per_step * T`` rows and ``rows_per_step`` consecutive rows are
stacked as channels; channels are concatenated in config order; with ``force_upsampling`` the
``(C, T)`` features are resized to ``max_seq_len`` cells. Every feature file of the split is checked
when the dataset is built (headers first, then every value: NaN/inf are an error or zeroed,
``dataset.on_nonfinite``), and a video's data is never replaced by another video's.
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

from .annotations import AnnotationSet, VideoRecord, load_annotations
from .crop import truncate_feats
from .features import FeatureProblem, FeatureSource, nonfinite_rows
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
        self.seed = seed
        self.num_classes = ds.num_classes
        self.splits: List[str] = list(splits)
        self.is_training = bool(is_training)
        self.max_seq_len = ds.max_seq_len
        self.force_upsampling = ds.force_upsampling
        self.use_cache = ds.cache
        self.on_nonfinite = ds.on_nonfinite
        self.epoch = 0

        ann = annotations if annotations is not None else load_annotations(
            ds.annotation_file, self.task, self.num_classes, self.splits,
            end_tolerance=ds.end_tolerance)
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
        self.label_names: Dict[int, str] = ann.label_names

        self.modalities = ds.modalities
        self.primary = next(i for i, m in enumerate(ds.modalities) if m.primary)  # one, checked at load
        self.sources = [FeatureSource(m.name, m.path, m.ext, m.dim) for m in ds.modalities]
        self.zero_filled: List[Set[str]] = [set() for _ in ds.modalities]
        # per modality: {video id: rows holding NaN/inf} (replaced by 0 with on_nonfinite 'zero')
        self.nonfinite: List[Dict[str, int]] = [{} for _ in ds.modalities]
        self._cache: Dict[int, Tuple[torch.Tensor, TimeGrid]] = {}
        self._check_files(ds.on_missing)
        self._check_values(show_progress)

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

    def _check_values(self, show_progress: bool) -> None:
        """Read every feature file once and count the rows holding NaN/inf (docs/numerics.md
        s.1.2): an error naming video, modality and count (``on_nonfinite: error``), or replaced by
        0 and logged (``zero``). With ``dataset.cache`` the assembled features are kept, so the
        files are read once in all (this is the cache fill)."""
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
            if self.use_cache and not errors:
                self._cache[index] = assemble_arrays(arrays, self.cfg_dataset,
                                                     self.videos[index].duration)
        for src in self.sources:
            src.close()
        if errors:
            self._cache.clear()
            raise UserError(format_problems(errors, f"{len(errors)} feature file problem(s) "
                                                    f"({self._where()}); dataset.on_nonfinite: zero "
                                                    "replaces NaN/inf by 0"))
        counts = {src.name: (len(self.nonfinite[i]), sum(self.nonfinite[i].values()))
                  for i, src in enumerate(self.sources) if self.nonfinite[i]}
        if counts:
            logger.warning("on_nonfinite 'zero': NaN/inf replaced by 0 in %s",
                           ", ".join(f"{k}: {r} rows of {v} video(s)" for k, (v, r) in counts.items()))
        logger.info("feature values of %d videos checked in %.1f s%s", len(self.videos),
                    time.time() - start, " (cached)" if self.use_cache else "")

    def _read_modalities(self, index: int, check: bool) -> List[Optional[np.ndarray]]:
        """The video's ``(T_i, dim_i)`` array per modality (None: zero-filled); non-finite values
        are counted in ``self.nonfinite`` and, with ``on_nonfinite: zero``, replaced by 0.
        ``check``: NaN/inf with ``on_nonfinite: error`` raise (a file changed after the check)."""
        vid = self.videos[index].video_id
        arrays: List[Optional[np.ndarray]] = []
        for i, src in enumerate(self.sources):
            if vid in self.zero_filled[i]:
                arrays.append(None)
                continue
            x = src.read(vid)                                                   # (T_i, dim_i)
            bad_rows = nonfinite_rows(x)
            if bad_rows:
                self.nonfinite[i][vid] = bad_rows
                if self.on_nonfinite == "zero":
                    x = np.where(np.isfinite(x), x, np.float32(0.0))
                elif check:
                    raise UserError(f"non-finite values ({src.where(vid)}): {bad_rows} of "
                                    f"{x.shape[0]} rows hold NaN or inf in {src.file_for(vid)}")
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
        """The video's ``(C, L)`` float32 features (before cropping) and its time grid."""
        if index in self._cache:
            return self._cache[index]
        rec = self.videos[index]
        feats, grid = assemble_arrays(self._read_modalities(index, check=True), self.cfg_dataset,
                                      rec.duration)
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
