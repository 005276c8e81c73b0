"""The feature cache: assembled ``(C, L)`` inputs of a split in ONE shared-memory tensor.

Memory is bounded (``dataset.cache_max_gb``) and paid once for all processes: the tensor is
allocated (not touched) when the dataset is built, before any DataLoader worker starts, and the
process that first reads a video (a loader worker, or the main process with
``loader.num_workers: 0``) writes it there; every worker then reads it from the same pages
(fork: the mapping is inherited; spawn: the segment is mapped again by name). Pages are only
backed by memory once written, so an unread video costs nothing (the segment is sized with
``ftruncate``, not reserved), and the main process of a training run with
workers never holds the cache pages itself (they show in the workers' and the total PSS).

Which videos: the first ``N`` of the split whose inputs fit the budget (and the free space of
``/dev/shm``); the rest are read from disk at every epoch, as with ``dataset.cache: false``
(the reference's way). Every item, cached or not, is rounded to ``dataset.cache_dtype``
(:func:`round_to`), so results never depend on the cache or the budget (docs/numerics.md s.1.5).

:class:`ReadError` is the user error raised while reading an item (NaN/inf found at the first
read, a file that vanished after the header check); it keeps its one-line message when a
DataLoader worker raised it.
"""
from __future__ import annotations

import logging
import os
import warnings
import weakref
from multiprocessing import resource_tracker, shared_memory
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from libs.common.errors import UserError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHM_DIR = "/dev/shm"
SHM_RESERVE = 256 * 2 ** 20        # bytes of /dev/shm left to the loader's own batch transfers
GB = 1e9


class ReadError(UserError):
    """A user error found while reading one item. A DataLoader worker's exception reaches the main
    process as ``ReadError("Caught ReadError in DataLoader worker process 0.\\nOriginal
    Traceback ...\\nlibs.datasets.cache.ReadError: <message>")``; the constructor keeps only
    ``<message>``, so ``run_cli`` prints the same one line as without workers."""

    def __init__(self, message: str) -> None:
        prefix = f"{__name__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            if last.startswith(prefix):
                message = last[len(prefix):]
        super().__init__(message)


def round_to(feats: torch.Tensor, dtype: str) -> torch.Tensor:
    """``feats`` (float32) rounded to ``dtype`` (a ``dataset.cache_dtype`` name) and back to
    float32: what the cache holds, applied to every item (float32: ``feats`` itself)."""
    if dtype == "float32":
        return feats
    return feats.to(DTYPES[dtype]).to(torch.float32)


class _Segment:
    """One named POSIX shared-memory segment (``/dev/shm/<name>``) sized with ``ftruncate``:
    no page is allocated before it is written (torch's own shared storages reserve every page up
    front with ``fallocate``, i.e. the whole cache budget at dataset build). Forked processes
    inherit the mapping; a pickled segment (a spawned DataLoader worker) maps it again by name.
    The creating process removes the name when the segment is collected or at exit; the memory
    itself is freed when the last process unmaps it."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: int) -> None:
        self.shm, self.owner = shm, owner

    @classmethod
    def create(cls, nbytes: int) -> "_Segment":
        seg = cls(shared_memory.SharedMemory(create=True, size=nbytes), os.getpid())
        weakref.finalize(seg, _unlink, seg.shm, seg.owner)
        return seg

    @property
    def name(self) -> str:
        return self.shm.name

    def tensor(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """The segment's first ``numel`` elements as a flat tensor of ``dtype``."""
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        with warnings.catch_warnings():   # the memoryview is writable; torch warns regardless
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(self.shm.buf, dtype=dtype, count=numel)

    def __getstate__(self) -> dict:
        return {"name": self.shm.name, "owner": self.owner}

    def __setstate__(self, state: dict) -> None:
        self.owner = state["owner"]
        self.shm = shared_memory.SharedMemory(name=state["name"])
        # Python < 3.13 registers an attached segment with the resource tracker, which would
        # remove the name when this (worker) process ends: only the owner removes it
        try:
            resource_tracker.unregister(self.shm._name, "shared_memory")
        except Exception:                  # pragma: no cover - tracker layout of another Python
            pass


def _unlink(shm: shared_memory.SharedMemory, owner: int) -> None:
    """Remove the segment's name (in the creating process only; forked children skip it)."""
    if os.getpid() != owner:
        return
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def _shm_free() -> Optional[int]:
    """Free bytes of ``/dev/shm`` (where the segment lives: a write past its free space would
    kill the writer with SIGBUS, so the cache is sized to fit it), None where unknown."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class FeatureCache:
    """Assembled inputs of videos ``0 .. count - 1`` of a split, shared by every process.

    ``channels`` C and ``lengths`` (per video, grid cells L_i) fix the layout: one flat shared
    tensor of ``sum(C * L_i)`` elements of ``dtype``, video ``i`` at ``offsets[i]`` as ``(C, L_i)``
    rows; ``rows[i]`` (shared int64) is the video's primary-modality row count ``T`` once it is
    filled, -1 before. ``max_bytes`` None: no limit.
    """

    def __init__(self, *, channels: int, lengths: Sequence[int], dtype: str,
                 max_bytes: Optional[float]) -> None:
        self.channels = int(channels)
        self.dtype = dtype
        torch_dtype = DTYPES[dtype]
        itemsize = torch.empty((), dtype=torch_dtype).element_size()
        sizes = np.asarray(lengths, dtype=np.int64).reshape(-1) * self.channels   # (V,) elements
        ends = np.cumsum(sizes) * itemsize                                         # (V,) bytes
        self.total_videos = int(sizes.size)
        count = self.total_videos if max_bytes is None else int(np.searchsorted(ends, max_bytes,
                                                                               side="right"))
        self.limited_by = "dataset.cache_max_gb" if count < self.total_videos else None
        free = _shm_free()
        if count and free is not None and ends[count - 1] > free - SHM_RESERVE:
            count = int(np.searchsorted(ends, max(free - SHM_RESERVE, 0), side="right"))
            self.limited_by = f"free space of {SHM_DIR} ({free / GB:.2f} GB)"
        self.count = count
        self.offsets = np.concatenate([[0], np.cumsum(sizes[:count])]).astype(np.int64)  # (N+1,)
        self.nbytes = int(self.offsets[-1]) * itemsize
        self._segment = _Segment.create(max(self.nbytes, itemsize))     # pages: on first write
        self.data = self._segment.tensor(torch_dtype, int(self.offsets[-1]))        # (sum C L_i,)
        self.rows = torch.full((count,), -1, dtype=torch.int64).share_memory_()    # (N,)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["data"]                 # a spawned process maps the same segment by its name
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.data = self._segment.tensor(DTYPES[self.dtype], int(self.offsets[-1]))

    def describe(self) -> str:
        """One line: how many videos, how much memory, which dtype, what limited it."""
        line = (f"feature cache: {self.count} of {self.total_videos} videos, "
                f"{self.nbytes / 2 ** 20:.1f} MiB of {self.dtype} in shared memory, filled at "
                f"each video's first read")
        if self.limited_by is not None:
            line += (f"; limited by {self.limited_by}: the other {self.total_videos - self.count} "
                     f"are read from disk at every epoch")
        return line

    def __contains__(self, index: int) -> bool:
        return 0 <= index < self.count and int(self.rows[index]) >= 0

    def filled(self) -> int:
        """Videos written so far (by any process)."""
        return int((self.rows >= 0).sum())

    def get(self, index: int) -> Optional[Tuple[torch.Tensor, int]]:
        """``(feats (C, L_i) float32, a new tensor; T primary rows)`` of a filled video, else None."""
        if index not in self:
            return None
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        feats = self.data[lo:hi].view(self.channels, -1).to(torch.float32, copy=True)
        return feats, int(self.rows[index])

    def put(self, index: int, feats: torch.Tensor, rows: int) -> None:
        """Store video ``index``'s ``(C, L_i)`` float32 inputs (already :func:`round_to` the
        cache dtype, so storing is exact) and its primary row count; a no-op past ``count``."""
        if not 0 <= index < self.count:
            return
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        assert feats.shape == (self.channels, (hi - lo) // self.channels), (feats.shape, lo, hi)
        self.data[lo:hi].view(self.channels, -1).copy_(feats)
        self.rows[index] = int(rows)          # written last: readers test it first
