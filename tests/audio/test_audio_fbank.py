"""libs/audio/fbank.py against the official torchaudio Kaldi fbank (golden) and a float64 reference."""
import math

import numpy as np
import pytest
import torch

from libs.audio.fbank import (FBANK_MEAN, FBANK_STD, WAVE_SCALE, beats_fbank, kaldi_fbank, mel_bank,
                              normalize_fbank, num_frames, povey_window, samples_for_frames)

LOG_EPS = math.log(2.0 ** -23)   # -15.942385


def _reference_fbank64(s: np.ndarray) -> np.ndarray:
    """The Kaldi recipe written out step by step in float64 numpy (slow and obvious)."""
    n_frames = 1 + (len(s) - 400) // 160
    frames = np.stack([s[160 * i: 160 * i + 400] for i in range(n_frames)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * prev
    n = np.arange(400)
    frames *= (0.5 - 0.5 * np.cos(2 * np.pi * n / 399)) ** 0.85
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2                      # (F, 257)
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / 129
    mu = mel(31.25 * np.arange(256))
    bank = np.zeros((128, 257))
    for m in range(128):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        up, down = (mu - left) / (centre - left), (right - mu) / (right - centre)
        bank[m, :256] = np.maximum(0, np.minimum(up, down))
    return np.log(np.maximum(power @ bank.T, 2.0 ** -23))


def test_fbank_matches_official_golden(golden):
    for name in golden["names"]:
        item = golden["items"][name]
        fb = kaldi_fbank(item["wave"] * WAVE_SCALE)
        assert fb.shape == item["fbank"].shape == (num_frames(item["num_samples"]), 128), name
        rel = ((fb - item["fbank"]).abs().max() / item["fbank"].abs().max()).item()
        assert rel <= 1e-4, (name, rel)
        norm = normalize_fbank(fb)
        assert (norm - item["fbank_norm"]).abs().max().item() <= 1e-4 * item["fbank_norm"].abs().max().item()
        assert torch.allclose(beats_fbank(item["wave"]), norm, atol=0, rtol=0)


def test_fbank_matches_float64_reference():
    rng = np.random.default_rng(3)
    wave = (0.2 * rng.standard_normal(5123) + 0.1 * np.sin(np.arange(5123) * 0.3)).astype(np.float32)
    ref = _reference_fbank64(wave.astype(np.float64) * 32768.0)
    ours = kaldi_fbank(torch.from_numpy(wave) * WAVE_SCALE).double().numpy()
    assert ours.shape == ref.shape == (30, 128)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_fbank_constants_and_shapes():
    zeros = kaldi_fbank(torch.zeros(16000))
    assert zeros.shape == (98, 128)
    assert torch.allclose(zeros, torch.full_like(zeros, LOG_EPS))
    noise = kaldi_fbank(torch.randn(3001, generator=torch.Generator().manual_seed(0)) * 1000)
    assert noise.shape == (17, 128)
    assert torch.all(noise[:, 3] == torch.tensor(LOG_EPS))               # mel filter 3 holds no FFT bin
    assert torch.all(noise[:, [0, 1, 2, 4]] > LOG_EPS)
    bank = mel_bank()
    assert bank.shape == (128, 257) and torch.all(bank[:, 256] == 0) and torch.all(bank[3] == 0)
    assert torch.all(bank[:, 0] == 0) and bank.max() <= 1.0 and int((bank.sum(dim=1) > 0).sum()) == 127
    w = povey_window()
    n = torch.arange(400, dtype=torch.float64)
    assert w.shape == (400,) and w[0] == 0 and w[-1] == 0                # symmetric Hann (N - 1 = 399)
    assert torch.allclose(w.double(), (0.5 - 0.5 * torch.cos(2 * math.pi * n / 399)) ** 0.85, atol=1e-6)
    assert normalize_fbank(torch.tensor([FBANK_MEAN + 2 * FBANK_STD])).item() == pytest.approx(1.0)
    assert [num_frames(n) for n in (399, 400, 559, 560, 2800, 16000)] == [0, 1, 1, 2, 16, 98]
    assert samples_for_frames(16) == 2800
    with pytest.raises(ValueError, match="at least 400"):
        kaldi_fbank(torch.zeros(399))


def test_fbank_batched_rows_equal_single_and_frames_are_local():
    gen = torch.Generator().manual_seed(1)
    waves = torch.randn(3, 4000, generator=gen) * 3000
    batched = kaldi_fbank(waves)
    for i in range(3):
        assert torch.allclose(batched[i], kaldi_fbank(waves[i]), atol=1e-5, rtol=0)
    # frames depend only on their own 400 samples: a crop on the frame grid gives the same frames
    assert torch.allclose(kaldi_fbank(waves[0, 1600:3600]), batched[0, 10:21], atol=1e-5, rtol=0)
