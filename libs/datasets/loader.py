"""DataLoaders whose batches depend only on ``(seed, epoch)``, not on the number of workers.

Training uses :class:`EpochSampler`: a permutation from a ``torch.Generator`` seeded with
``seed + epoch`` (each rank takes its slice, like ``DistributedSampler``). It yields
``(epoch, index)`` keys so that the dataset's crops follow the epoch even inside persistent
worker processes. Inference reads the videos in order, without dropping any.

The loader draws its workers' base seed from its own ``torch.Generator`` (seeded with ``seed``),
never from the global torch RNG: the main process's global RNG (stochastic-depth masks) then does
not depend on when worker iterators are created, so a resumed run, whose persistent workers start
at the resume, draws exactly what the uninterrupted run drew (docs/numerics.md s.9.6). Workers
ignore SIGTERM and SIGINT: the main process decides when to stop (requeue-safe SIGTERM, README).
"""
from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import multiprocessing.util  # registers its exit handler now, so that ours runs before it
import random
import signal
from typing import Any, Iterator, List, Optional, Sized, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .collate import collate_batch, padded_length

logger = logging.getLogger(__name__)


class EpochSampler(Sampler):
    """Shuffled ``(epoch, index)`` keys; ``set_epoch(epoch)`` reshuffles and forwards to the dataset.

    With ``world_size > 1`` the permutation is padded (wrapping around) to a multiple of
    ``world_size`` and rank ``r`` takes ``perm[r::world_size]``.
    """

    def __init__(self, dataset: Sized, seed: int, rank: int = 0, world_size: int = 1) -> None:
        assert 0 <= rank < world_size, (rank, world_size)
        self.dataset = dataset
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.num_samples = -(-len(dataset) // world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (from its first key: any :meth:`set_start` is reset)."""
        self.epoch = int(epoch)
        self.start = 0
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def set_start(self, start: int) -> None:
        """Skip this epoch's first ``start`` keys (this rank's): a run resumed in mid-epoch
        continues with the batches the uninterrupted run would have drawn next."""
        assert 0 <= start <= self.num_samples, (start, self.num_samples)
        self.start = int(start)

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.dataset), generator=gen)                 # (N,)
        total = self.num_samples * self.world_size
        if total > perm.numel():
            reps = -(-total // perm.numel())
            perm = perm.repeat(reps)[:total]
        mine = perm[self.rank:total:self.world_size].tolist()[self.start:]
        return iter([(self.epoch, i) for i in mine])


def length_grouped_batches(dataset: Any, batch_size: int, max_seq_len: int,
                           max_div_factor: int) -> List[List[int]]:
    """Inference batches in dataset order, each holding videos of one padded length (a new batch
    starts when the length changes), so that a video's detections do not depend on the batch
    size: the padded length sets the position embedding's stretch. With force_upsampling every
    video has max_seq_len cells and the batches are simply consecutive."""
    batches: List[List[int]] = []
    last = None
    for index in range(len(dataset)):
        length = padded_length(dataset.grid_length(index), max_seq_len, max_div_factor)
        if not batches or length != last or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(index)
        last = length
    return batches


_REAPER_REGISTERED = False


def _worker_init(worker_id: int) -> None:
    """Seed python/numpy in each worker from torch's per-worker seed (crops use their own rng);
    ignore SIGTERM/SIGINT, which a scheduler or a terminal sends to the whole process group: the
    main process stops the workers when it has saved its state."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2 ** 31
    random.seed(seed)
    np.random.seed(seed)


def _stop_loader_workers() -> None:
    """At interpreter exit: kill the daemonic children still alive, i.e. the DataLoader workers
    of a loader with persistent workers that was never released (the only daemonic processes
    this project starts). ``multiprocessing`` would stop them with SIGTERM and wait, but the
    workers ignore SIGTERM (:func:`_worker_init`), so that wait would never end. Registered after
    ``multiprocessing``'s own exit handler, so it runs before it."""
    workers = [p for p in multiprocessing.active_children() if p.daemon and p.is_alive()]
    if not workers:
        return
    # torch's SIGCHLD handler would raise "DataLoader worker killed" in the middle of this loop
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for proc in workers:
        proc.kill()
    for proc in workers:
        proc.join(timeout=5)


def make_loader(dataset: Any, *, batch_size: int, num_workers: int, is_training: bool, seed: int,
                max_seq_len: int, max_div_factor: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader of :func:`collate_batch` batches (shuffled + drop_last when training); worker
    seeds come from a generator of its own seeded with ``seed`` (module docstring)."""
    collate = functools.partial(collate_batch, max_seq_len=max_seq_len, max_div_factor=max_div_factor,
                                is_training=is_training)
    sampler: Optional[Sampler] = None
    if is_training:
        sampler = EpochSampler(dataset, seed, rank=rank, world_size=world_size)
        if len(sampler) < batch_size:
            logger.warning("training set has %d video(s) per process, fewer than batch_size %d: "
                           "no full batch (drop_last)", len(sampler), batch_size)
    workers = int(num_workers)
    global _REAPER_REGISTERED
    if workers > 0 and not _REAPER_REGISTERED:
        atexit.register(_stop_loader_workers)
        _REAPER_REGISTERED = True
    if workers > 0 and hasattr(dataset, "prefill_cache"):
        dataset.prefill_cache()  # one cache shared by the workers, not one per worker
    batching: dict = {"batch_size": batch_size, "sampler": sampler, "drop_last": bool(is_training)}
    if not is_training and hasattr(dataset, "grid_length"):
        batching = {"batch_sampler": length_grouped_batches(dataset, batch_size, max_seq_len,
                                                            max_div_factor)}
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(int(seed)),   # not the global RNG: exact resume
        pin_memory=torch.cuda.is_available(),  # faster host-to-GPU copies; a no-op on CPU-only
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler (if it has one) and of its dataset."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def skip_loader_batches(loader: DataLoader, batches: int) -> None:
    """Start the loader's current epoch (after :func:`set_loader_epoch`) at batch ``batches``:
    a run resumed in mid-epoch draws the batches the uninterrupted run drew next."""
    if batches:
        sampler = loader.sampler
        assert isinstance(sampler, EpochSampler), "only training loaders resume in mid-epoch"
        sampler.set_start(batches * loader.batch_size)
