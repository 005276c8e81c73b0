"""Kaldi-compatible log-mel filterbank exactly as BEATs computes it, in plain PyTorch.

This re-implements ``torchaudio.compliance.kaldi.fbank`` for the one parameter set BEATs uses
(docs/feature_extraction.md, "Fbank"): 16 kHz, 128 mel bins, 25 ms frames (400 samples) every
10 ms (160 samples), ``snip_edges`` framing (no padding), no dither, per-frame DC removal,
pre-emphasis 0.97 (first sample replicated), the 'povey' window (symmetric Hann ** 0.85), zero
padding to a 512-point FFT, power spectrum, Kaldi's natural-log mel triangles (20 Hz .. Nyquist,
Nyquist bin unused) and ``log(max(E, 2 ** -23))``. The same primitives are used in the same order
as torchaudio, so CPU results agree with the official code to float round-off.

Units: ``N`` samples at 16 kHz, ``F = 1 + (N - 400) // 160`` frames.
"""
from __future__ import annotations

import functools
import math
from typing import Tuple

import torch

SAMPLE_RATE = 16000        # Hz
FRAME_LENGTH = 400         # samples (25 ms)
FRAME_SHIFT = 160          # samples (10 ms)
FFT_SIZE = 512             # next power of two above FRAME_LENGTH
NUM_MEL_BINS = 128
LOW_FREQ = 20.0            # Hz; the high edge is the Nyquist frequency
PREEMPHASIS = 0.97
WAVE_SCALE = 2.0 ** 15     # BEATs multiplies [-1, 1] audio by 32768 before the fbank
LOG_FLOOR = torch.finfo(torch.float32).eps  # 2 ** -23
FBANK_MEAN = 15.41663      # BEATs' dataset statistics of the log-mel values
FBANK_STD = 6.55582


def num_frames(num_samples: int) -> int:
    """Fbank frames of ``num_samples`` 16 kHz samples (snip_edges): 0 when shorter than a frame."""
    if num_samples < FRAME_LENGTH:
        return 0
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def samples_for_frames(frames: int) -> int:
    """The fewest samples that give ``frames`` fbank frames (``frames >= 1``)."""
    return FRAME_LENGTH + FRAME_SHIFT * (frames - 1)


def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi's mel scale ``1127 ln(1 + f / 700)`` (f in Hz)."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=None)
def _mel_bank_cpu() -> torch.Tensor:
    """The (128, 257) float32 triangular mel weights (last column, the Nyquist bin, is zero).

    Built in float32 from Python-double edges like torchaudio's ``get_mel_banks`` (vtln off).
    """
    num_fft_bins = FFT_SIZE // 2                                                 # 256
    lo, hi = _mel(LOW_FREQ), _mel(0.5 * SAMPLE_RATE)
    delta = (hi - lo) / (NUM_MEL_BINS + 1)
    m = torch.arange(NUM_MEL_BINS).unsqueeze(1)                                  # (128, 1) int64
    left = lo + m * delta                                                        # (128, 1) float32
    centre = lo + (m + 1.0) * delta
    right = lo + (m + 2.0) * delta
    mel_k = _mel((SAMPLE_RATE / FFT_SIZE) * torch.arange(float(num_fft_bins))).unsqueeze(0)  # (1, 256)
    up = (mel_k - left) / (centre - left)
    down = (right - mel_k) / (right - centre)
    bank = torch.max(torch.zeros(1), torch.min(up, down))                        # (128, 256)
    return torch.nn.functional.pad(bank, (0, 1), mode="constant", value=0.0)     # (128, 257)


def mel_bank(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (128, 257) mel weight matrix on ``device`` in ``dtype``."""
    return _mel_bank_cpu().to(device=device, dtype=dtype)


def povey_window(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(400,) symmetric Hann window (denominator 399) raised to 0.85."""
    return torch.hann_window(FRAME_LENGTH, periodic=False, device=device, dtype=dtype).pow(0.85)


def kaldi_fbank(wave: torch.Tensor) -> torch.Tensor:
    """Log-mel fbank of already-scaled samples: ``(..., N) -> (..., F, 128)`` in ``wave``'s dtype.

    ``wave`` holds samples at 16 kHz on the int16 scale (BEATs passes ``audio * 32768``); any
    leading batch axes are kept, frames are independent of each other. Raises ValueError when
    ``N < 400`` (no complete frame).
    """
    n = wave.shape[-1]
    if n < FRAME_LENGTH:
        raise ValueError(f"fbank needs at least {FRAME_LENGTH} samples, got {n}")
    dtype, device = wave.dtype, wave.device
    frames = wave.unfold(-1, FRAME_LENGTH, FRAME_SHIFT)                          # (..., F, 400)
    frames = frames - frames.mean(dim=-1, keepdim=True)                          # DC removal
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)            # x[j-1], x[-1] := x[0]
    frames = frames - PREEMPHASIS * previous
    frames = frames * povey_window(device, dtype)
    frames = torch.nn.functional.pad(frames, (0, FFT_SIZE - FRAME_LENGTH))       # (..., F, 512)
    power = torch.fft.rfft(frames).abs().pow(2.0)                                # (..., F, 257)
    energies = torch.matmul(power, mel_bank(device, dtype).T)                    # (..., F, 128)
    floor = torch.tensor(LOG_FLOOR, device=device, dtype=dtype)
    return torch.max(energies, floor).log()


def normalize_fbank(fbank: torch.Tensor) -> torch.Tensor:
    """BEATs' input normalisation ``(fbank - 15.41663) / (2 * 6.55582)`` (twice the std)."""
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


def beats_fbank(audio: torch.Tensor) -> torch.Tensor:
    """BEATs' preprocessing: ``(..., N)`` float audio in [-1, 1] at 16 kHz -> normalised
    ``(..., F, 128)`` log-mel (``audio * 32768``, :func:`kaldi_fbank`, :func:`normalize_fbank`)."""
    return normalize_fbank(kaldi_fbank(audio * WAVE_SCALE))


def fbank_shape(num_samples: int) -> Tuple[int, int]:
    """``(F, 128)`` for ``num_samples`` samples."""
    return num_frames(num_samples), NUM_MEL_BINS
