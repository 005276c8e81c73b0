"""From 16 kHz waveforms to BEATs features: chunking long audio, batching, stitching.

Units: a *patch* (time step) is 16 fbank frames = 2560 samples = 160 ms and gives 8 output rows
(one per frequency band). A waveform of N samples has ``T' = (1 + (N - 400) // 160) // 16``
patches and ``8 T'`` rows; the last ``N - (2560 T' + 240)`` samples are not used.

Chunking (docs/feature_extraction.md, "Long audio"): a file of more than ``C`` patches is cut
into windows of ``C`` patches starting on the patch grid, consecutive windows sharing at least
``V`` patches (the last window is aligned to the end, so it is full length). Each window's
fbank frames are bit-identical to the unchunked ones; only the encoder context differs. Every
patch is taken from one window: overlaps are split at their midpoint, so a kept patch has at
least ``V // 2`` patches of context on a cut side. Files of at most ``C`` patches are one window
that is the whole file, computed exactly as without chunking.

Batching: windows (of one or several files) are batched in arrival order; rows of different
length are zero-padded and the model masks the padding (``BEATs.forward(num_patches=...)``), so
a batched file equals the same file alone up to float round-off.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from libs.common.errors import UserError

from .beats import BEATs
from .fbank import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE, beats_fbank

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """One model input: patches ``[start, start + length)`` of a file, of which
    ``[keep_from, keep_to)`` (absolute patch indices) go to the output."""
    start: int
    length: int
    keep_from: int
    keep_to: int


def chunk_sizes(model: BEATs, chunk_seconds: float, overlap_seconds: float) -> Tuple[int, int]:
    """``(C, V)`` in patches for chunks of ``chunk_seconds`` sharing ``overlap_seconds``
    (rounded to the 160 ms grid); ``C = 0`` means no chunking. Bad values are a UserError."""
    step = model.frames_per_patch * FRAME_SHIFT / SAMPLE_RATE                  # seconds per patch
    if chunk_seconds < 0 or overlap_seconds < 0:
        raise UserError(f"negative chunk length or overlap (--chunk-seconds {chunk_seconds}, "
                        f"--chunk-overlap {overlap_seconds}): expected >= 0")
    if chunk_seconds == 0:
        return 0, 0
    c = max(1, int(chunk_seconds / step + 0.5))
    v = int(overlap_seconds / step + 0.5)
    if v >= c:
        raise UserError(f"chunk overlap {overlap_seconds} s is not shorter than the chunk "
                        f"{chunk_seconds} s (--chunk-overlap, --chunk-seconds): expected overlap < chunk")
    return c, v


def plan_windows(num_patches: int, chunk: int, overlap: int) -> List[Window]:
    """Windows covering ``num_patches`` (>= 1) patches: one window if ``chunk`` is 0 or not
    smaller than the file, else ``chunk``-patch windows every ``chunk - overlap`` patches with the
    last aligned to the end; kept ranges tile ``[0, num_patches)`` exactly."""
    if chunk <= 0 or num_patches <= chunk:
        return [Window(0, num_patches, 0, num_patches)]
    hop = chunk - overlap
    n = -(-(num_patches - chunk) // hop) + 1                                   # ceil + 1
    starts = [k * hop for k in range(n - 1)] + [num_patches - chunk]
    cuts = [0] + [(starts[k + 1] + starts[k] + chunk) // 2 for k in range(n - 1)] + [num_patches]
    return [Window(s, chunk, cuts[k], cuts[k + 1]) for k, s in enumerate(starts)]


def num_patches_of(model: BEATs, num_samples: int) -> int:
    """Time patches of ``num_samples`` 16 kHz samples (0 if fewer than one patch)."""
    if num_samples < FRAME_LENGTH:
        return 0
    return (1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT) // model.frames_per_patch


def min_samples(model: BEATs) -> int:
    """Fewest samples giving one patch: 2800 (0.175 s) for BEATs."""
    return FRAME_LENGTH + FRAME_SHIFT * (model.frames_per_patch - 1)


@torch.no_grad()
def run_batch(model: BEATs, waves: Sequence[torch.Tensor], device: torch.device) -> List[torch.Tensor]:
    """Features of waveforms cropped to whole patches: each ``(2560 n_i + 240,)`` float32 ->
    ``(8 n_i, C)`` float32 on CPU. Different lengths are zero-padded and masked."""
    fbanks = [beats_fbank(w.to(device)) for w in waves]                        # (16 n_i, 128) each
    lengths = [f.shape[0] // model.frames_per_patch for f in fbanks]
    if len(set(lengths)) == 1:
        out = model(torch.stack(fbanks))                                        # (B, 8 n, C)
    else:
        longest = max(f.shape[0] for f in fbanks)
        batch = torch.zeros(len(fbanks), longest, fbanks[0].shape[1], device=device)
        for i, f in enumerate(fbanks):
            batch[i, : f.shape[0]] = f
        out = model(batch, torch.tensor(lengths, device=device))               # (B, 8 max n, C)
    rows = model.tokens_per_patch
    return [out[i, : rows * n].float().cpu() for i, n in enumerate(lengths)]


class BatchRunner:
    """Streams files through the model: ``add`` a file's waveform, get finished files back.

    Windows of all added files queue in arrival order and run ``batch_size`` at a time; a file
    is returned (as ``(key, (T, C) float32 ndarray)``) once all its windows have run. Add files
    sorted by length so that batches hold similar lengths (little padding).
    """

    def __init__(self, model: BEATs, device: torch.device | str = "cpu", batch_size: int = 1,
                 chunk: int = 0, overlap: int = 0) -> None:
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} (--batch): expected >= 1")
        self.model, self.device = model, torch.device(device)
        self.batch_size, self.chunk, self.overlap = int(batch_size), int(chunk), int(overlap)
        self._queue: List[Tuple[Hashable, int, Window, torch.Tensor]] = []
        self._parts: Dict[Hashable, List[Optional[torch.Tensor]]] = {}

    def add(self, key: Hashable, wave: np.ndarray | torch.Tensor) -> List[Tuple[Hashable, np.ndarray]]:
        """Queue ``wave`` (``(N,)`` float32, 16 kHz, N >= 2800); returns the files finished so far."""
        assert key not in self._parts, f"duplicate key {key!r}"
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        n = num_patches_of(self.model, wave.shape[0])
        if n < 1:
            raise ValueError(f"{wave.shape[0]} samples is less than one patch "
                             f"({min_samples(self.model)} samples)")
        spp = self.model.frames_per_patch * FRAME_SHIFT                         # samples per patch
        windows = plan_windows(n, self.chunk, self.overlap)
        self._parts[key] = [None] * len(windows)
        for idx, w in enumerate(windows):
            crop = wave[w.start * spp: (w.start + w.length) * spp + FRAME_LENGTH - FRAME_SHIFT]
            self._queue.append((key, idx, w, crop))
        done: List[Tuple[Hashable, np.ndarray]] = []
        while len(self._queue) >= self.batch_size:
            done += self._run(self.batch_size)
        return done

    def flush(self) -> List[Tuple[Hashable, np.ndarray]]:
        """Run every queued window; returns the remaining finished files."""
        done: List[Tuple[Hashable, np.ndarray]] = []
        while self._queue:
            done += self._run(self.batch_size)
        return done

    def discard(self) -> None:
        """Drop queued work (after an error)."""
        self._queue.clear()
        self._parts.clear()

    def _run(self, size: int) -> List[Tuple[Hashable, np.ndarray]]:
        items, self._queue = self._queue[:size], self._queue[size:]
        outs = run_batch(self.model, [crop for *_, crop in items], self.device)
        rows = self.model.tokens_per_patch
        touched: List[Hashable] = []
        for (key, idx, w, _), feats in zip(items, outs):
            self._parts[key][idx] = feats[(w.keep_from - w.start) * rows: (w.keep_to - w.start) * rows]
            if key not in touched:
                touched.append(key)
        done = []
        for key in touched:
            parts = self._parts[key]
            if all(p is not None for p in parts):
                feats = torch.cat(parts, dim=0).numpy()                         # (8 T', C)
                del self._parts[key]
                done.append((key, np.ascontiguousarray(feats, dtype=np.float32)))
        return done


def extract_waves(model: BEATs, waves: Sequence[Any], device: torch.device | str = "cpu",
                  batch_size: int = 1, chunk_seconds: float = 0.0,
                  overlap_seconds: float = 0.0) -> List[np.ndarray]:
    """Features of in-memory 16 kHz waveforms (each ``(N_i,)``, N_i >= 2800), in input order:
    ``[(8 T'_i, C) float32]``. Sorted by length internally for batching."""
    chunk, overlap = chunk_sizes(model, chunk_seconds, overlap_seconds)
    runner = BatchRunner(model, device, batch_size, chunk, overlap)
    order = sorted(range(len(waves)), key=lambda i: (len(waves[i]), i))
    out: Dict[Hashable, np.ndarray] = {}
    for i in order:
        out.update(runner.add(i, waves[i]))
    out.update(runner.flush())
    return [out[i] for i in range(len(waves))]
