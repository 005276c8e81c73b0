"""libs/audio/extract.py (chunking, stitching, batching) and libs/audio/media.py (reading, mono,
resampling, ffmpeg)."""
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from libs.audio import media
from libs.audio.extract import chunk_sizes, extract_waves, plan_windows
from libs.audio.media import AudioError, read_audio, resample_to_16k, to_mono
from libs.common.errors import UserError

HAVE_FFMPEG = shutil.which("ffmpeg") is not None


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


@pytest.mark.parametrize("t,c,v", [(1, 10, 2), (10, 10, 2), (11, 10, 2), (100, 30, 6), (101, 30, 0),
                                   (375, 375, 62), (1000, 375, 62), (57, 7, 6), (40, 1, 0)])
def test_windows_tile_the_file(t, c, v):
    wins = plan_windows(t, c, v)
    kept = np.concatenate([np.arange(w.keep_from, w.keep_to) for w in wins])
    assert np.array_equal(kept, np.arange(t))                              # every patch exactly once
    for k, w in enumerate(wins):
        assert 0 <= w.start and w.start + w.length <= t and w.length == min(c, t)
        assert w.start <= w.keep_from < w.keep_to <= w.start + w.length
        if k > 0:                                                          # context on a cut side
            assert w.keep_from - w.start >= v // 2 and wins[k - 1].start + c - w.keep_from >= v // 2
            assert wins[k - 1].start + c - w.start >= v                   # windows overlap >= v
    assert plan_windows(t, 0, 0) == plan_windows(t, t, 0)


def test_chunk_sizes(tiny_model):
    assert chunk_sizes(tiny_model, 60.0, 10.0) == (375, 63)               # 160 ms patches
    assert chunk_sizes(tiny_model, 0.0, 10.0) == (0, 0)
    with pytest.raises(UserError, match="--chunk-overlap"):
        chunk_sizes(tiny_model, 1.0, 1.0)
    with pytest.raises(UserError, match="negative"):
        chunk_sizes(tiny_model, -1.0, 0.0)


def test_short_audio_chunked_equals_unchunked_exactly(tiny_model):
    wave = _noise(9.0)                                                     # 56 patches < 10 s chunk
    whole = extract_waves(tiny_model, [wave])[0]
    chunked = extract_waves(tiny_model, [wave], chunk_seconds=10.0, overlap_seconds=2.0)[0]
    assert whole.shape == (8 * 56, 64) and np.array_equal(whole, chunked)
    # the unused tail (< one patch) does not change anything
    assert np.array_equal(extract_waves(tiny_model, [wave[: 2560 * 56 + 240]])[0], whole)


def test_long_audio_is_stitched_from_windows(tiny_model):
    wave = _noise(12.0, seed=1)                                            # 74 patches
    chunked = extract_waves(tiny_model, [wave], batch_size=2, chunk_seconds=4.0, overlap_seconds=1.0)[0]
    whole = extract_waves(tiny_model, [wave])[0]
    assert chunked.shape == whole.shape == (8 * 74, 64)
    wins = plan_windows(74, 25, 6)
    assert len(wins) == 4
    for w in wins:                                             # each kept range = that window alone
        crop = wave[2560 * w.start: 2560 * (w.start + w.length) + 240]
        alone = extract_waves(tiny_model, [crop])[0]
        rows = slice(8 * (w.keep_from - w.start), 8 * (w.keep_to - w.start))
        assert np.abs(chunked[8 * w.keep_from: 8 * w.keep_to] - alone[rows]).max() < 1e-5
    diff = np.abs(chunked - whole).max()
    assert 1e-4 < diff < 2 * np.abs(whole).max()                          # context differs, same scale


def test_batched_equals_per_file(tiny_model, golden):
    waves = [golden["items"][n]["wave"].numpy() for n in golden["names"]] + [_noise(3.3, 2), _noise(3.3, 3)]
    single = extract_waves(tiny_model, waves, batch_size=1)
    for b in (2, 3, 8):
        batched = extract_waves(tiny_model, waves, batch_size=b)
        for x, y in zip(single, batched):
            assert x.shape == y.shape and np.abs(x - y).max() < 1e-5
    assert np.abs(single[1] - golden["items"]["noise"]["features"].numpy()).max() < 1e-4
    # chunked long files batch their windows too
    long = [_noise(7.0, 4), _noise(5.0, 5)]
    a = extract_waves(tiny_model, long, batch_size=1, chunk_seconds=2.0, overlap_seconds=0.5)
    b = extract_waves(tiny_model, long, batch_size=3, chunk_seconds=2.0, overlap_seconds=0.5)
    assert all(np.abs(x - y).max() < 1e-5 for x, y in zip(a, b))


def test_mono_and_resampling():
    stereo = np.stack([np.full(10, 0.5), np.full(10, -0.1)], axis=1).astype(np.float32)
    assert np.allclose(to_mono(stereo), 0.2)
    for rate in (44100, 48000, 22050, 8000):
        t = np.arange(rate * 2) / rate
        x = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
        y = resample_to_16k(x, rate)
        assert y.dtype == np.float32 and y.shape == (32000,)
        ref = np.sin(2 * np.pi * 440.0 * np.arange(32000) / 16000)
        assert np.abs(y[800:-800] - ref[800:-800]).max() < 2e-3, rate     # away from the edges
    t48 = np.arange(48000) / 48000
    x = np.sin(2 * np.pi * 7000.0 * t48) + np.sin(2 * np.pi * 12000.0 * t48)
    y = resample_to_16k(x.astype(np.float32), 48000)                       # 12 kHz is above 8 kHz: removed
    spec = np.abs(np.fft.rfft(y[1000:-1000]))
    freqs = np.fft.rfftfreq(len(y) - 2000, 1 / 16000)
    assert abs(freqs[spec.argmax()] - 7000) < 5 and spec[np.abs(freqs - 4000) < 50].max() < 0.01 * spec.max()
    assert resample_to_16k(x[:100].astype(np.float32), 16000) is not None


def test_read_audio_formats(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo, 44100, subtype="FLOAT")
    y = read_audio(tmp_path / "a.wav")
    assert y.shape == (16000,) and np.allclose(y, resample_to_16k(stereo.mean(1), 44100), atol=1e-6)
    mono = _noise(1.0)
    sf.write(tmp_path / "b.flac", mono, 16000, subtype="PCM_16")
    assert np.abs(read_audio(tmp_path / "b.flac") - mono).max() < 1 / 32768 + 1e-6
    sf.write(tmp_path / "c.ogg", mono, 16000)
    assert read_audio(tmp_path / "c.ogg").shape[0] == 16000
    (tmp_path / "d.wav").write_bytes(b"RIFF....junk")
    with pytest.raises(AudioError):
        read_audio(tmp_path / "d.wav")


def test_containers_without_ffmpeg_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "find_ffmpeg", lambda: None)
    (tmp_path / "v.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(AudioError, match=r"\.mp4 files need ffmpeg"):
        read_audio(tmp_path / "v.mp4")
    assert ".mkv" not in media.audio_extensions() and ".wav" in media.audio_extensions()


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg is not installed")
def test_ffmpeg_decodes_containers(tmp_path):
    rng = np.random.default_rng(1)
    t = np.arange(48000 * 2) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 300 * t)
    stereo = (np.stack([tone, tone], 1) + 0.01 * rng.standard_normal((96000, 2))).astype(np.float32)
    sf.write(tmp_path / "src.wav", stereo, 48000, subtype="FLOAT")
    ref = read_audio(tmp_path / "src.wav")                                  # soundfile + resample_poly
    for name, codec in (("clip.mkv", ["-c:a", "flac"]), ("clip.mp4", ["-c:a", "aac", "-b:a", "192k"])):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tmp_path / "src.wav"), *codec,
                        str(tmp_path / name)], check=True, timeout=60)
        y = read_audio(tmp_path / name)
        assert y.dtype == np.float32 and abs(y.shape[0] - 32000) <= 1100, (name, y.shape)
        if name.endswith(".mkv"):                        # lossless: same mono mean and resampler as soundfile
            assert abs(media.probe_seconds(tmp_path / name) - 2.0) < 0.05
            assert y.shape == ref.shape and np.abs(y - ref).max() < 1e-4
        else:
            spec = np.abs(np.fft.rfft(y))
            assert abs(np.fft.rfftfreq(len(y), 1 / 16000)[spec.argmax()] - 300) < 2
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=black:s=32x32:d=1",
                    "-c:v", "mpeg4", str(tmp_path / "silent_video.mp4")], check=True, timeout=60)
    with pytest.raises(AudioError, match="no audio stream"):
        read_audio(tmp_path / "silent_video.mp4")
