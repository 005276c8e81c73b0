"""Reading audio as 16 kHz mono float32: soundfile for WAV/FLAC/OGG, ffmpeg for everything else.

* soundfile (libsndfile) files are read as float32 in [-1, 1], mixed to mono by the channel mean
  and resampled with :func:`resample_to_16k` (``scipy.signal.resample_poly``).
* With an ``ffmpeg`` executable on PATH (detected at run time; optional), any audio or video
  container ffmpeg can demux is decoded through a pipe (``ffmpeg -i FILE -map 0:a:0 -f wav
  -acodec pcm_f32le -``: float32 samples at the stream's own rate and channel count), then mixed
  and resampled exactly like a soundfile file. A ``.wav/.flac/.ogg`` that libsndfile cannot
  read is retried with ffmpeg when it is present.

Problems with one file raise :class:`AudioError` (one line, naming the file), so a folder run can
report and skip it. Details: docs/feature_extraction.md ("Input audio").
"""
from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import struct
import subprocess
from typing import Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SOUNDFILE_EXTS = (".wav", ".flac", ".ogg")
FFMPEG_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4a", ".mp3", ".aac", ".opus", ".wma",
               ".m4v", ".mpg", ".mpeg", ".ts", ".3gp", ".flv", ".oga", ".aiff", ".aif")
FFMPEG_TIMEOUT = 3600.0   # seconds for one decode


class AudioError(Exception):
    """One file could not be turned into usable audio; ``str(err)`` is a one-line reason."""


@functools.lru_cache(maxsize=None)
def find_ffmpeg() -> Optional[str]:
    """Path of the ``ffmpeg`` executable on PATH, or None (looked up once per process)."""
    return shutil.which("ffmpeg")


@functools.lru_cache(maxsize=None)
def find_ffprobe() -> Optional[str]:
    """Path of ``ffprobe`` (ships with ffmpeg), or None."""
    return shutil.which("ffprobe")


def audio_extensions(with_ffmpeg: Optional[bool] = None) -> tuple:
    """File extensions (lower case, with dot) this process can read."""
    if with_ffmpeg is None:
        with_ffmpeg = find_ffmpeg() is not None
    return SOUNDFILE_EXTS + (FFMPEG_EXTS if with_ffmpeg else ())


def to_mono(x: np.ndarray) -> np.ndarray:
    """``(N, C)`` or ``(N,)`` samples -> ``(N,)`` float32, the mean over channels."""
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    return x.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample_to_16k(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono ``(N,)`` audio from ``rate`` Hz to 16 kHz -> ``(ceil(N * 16000 / rate),)`` float32.

    Polyphase filtering (``scipy.signal.resample_poly`` with ``up/down = 16000/rate`` reduced by
    their gcd, e.g. 160/441 for 44.1 kHz and 1/3 for 48 kHz; its default Kaiser window, beta 5,
    anti-aliasing low-pass at the lower Nyquist frequency). 16 kHz input is returned unchanged.
    """
    if rate == SAMPLE_RATE:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), SAMPLE_RATE)
    y = resample_poly(x.astype(np.float64), SAMPLE_RATE // g, int(rate) // g)
    return y.astype(np.float32)


def _read_soundfile(path: str) -> np.ndarray:
    import soundfile as sf

    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)               # (N, C)
    except Exception as err:  # libsndfile's errors (sf.LibsndfileError, RuntimeError, ...)
        raise AudioError(f"unreadable audio: {' '.join(str(err).split())[:160]}") from None
    if data.shape[1] == 0 or rate <= 0:
        raise AudioError(f"no audio channels (rate {rate} Hz, shape {data.shape})")
    return resample_to_16k(to_mono(data), int(rate))


def _parse_wav_stream(data: bytes) -> Tuple[np.ndarray, int]:
    """``(samples (N, C) float32, rate)`` of a float32 WAV byte stream as ffmpeg writes it to a
    pipe (the RIFF and data sizes may be placeholders, so the data runs to the end)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("ffmpeg produced no WAV stream")
    pos, channels, rate = 12, 0, 0
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if tag == b"fmt ":
            channels, rate = struct.unpack("<HI", data[pos + 10:pos + 16])
        elif tag == b"data":
            body = data[pos + 8:]
            if channels < 1 or rate < 1:
                raise AudioError("ffmpeg wrote no audio format")
            usable = len(body) // (4 * channels) * 4 * channels
            return np.frombuffer(body[:usable], dtype="<f4").reshape(-1, channels), int(rate)
        pos += 8 + size + (size & 1)
    raise AudioError("ffmpeg wrote no audio data")


def _read_ffmpeg(path: str, ffmpeg: str) -> np.ndarray:
    """Decode the first audio stream at its own rate and channels, then mix and resample as for
    soundfile files (ffmpeg's own ``-ac 1`` downmix is (L + R) / sqrt 2, not the channel mean)."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path, "-map", "0:a:0",
           "-vn", "-sn", "-dn", "-f", "wav", "-acodec", "pcm_f32le", "-"]
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=FFMPEG_TIMEOUT,
                             check=False)
    except subprocess.TimeoutExpired:
        raise AudioError(f"ffmpeg did not finish within {FFMPEG_TIMEOUT:.0f} s") from None
    if res.returncode != 0:
        msg = " ".join(res.stderr.decode("utf-8", "replace").split())[-200:] or f"exit {res.returncode}"
        if "matches no streams" in msg:
            msg = "no audio stream"
        raise AudioError(f"ffmpeg cannot decode it: {msg}")
    samples, rate = _parse_wav_stream(res.stdout)                              # (N, C)
    return resample_to_16k(to_mono(samples), rate)


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """The file's audio as ``(N,)`` float32 mono at 16 kHz; raises :class:`AudioError`.

    ``.wav/.flac/.ogg`` go through soundfile (then ffmpeg as a fallback if present); any other
    extension needs ffmpeg. Non-finite samples are an error.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    ffmpeg = find_ffmpeg()
    if ext in SOUNDFILE_EXTS:
        try:
            wave = _read_soundfile(path)
        except AudioError as err:
            if ffmpeg is None:
                raise
            logger.debug("%s: soundfile failed (%s); trying ffmpeg", path, err)
            try:
                wave = _read_ffmpeg(path, ffmpeg)
            except AudioError as err2:
                raise AudioError(f"{err}; {err2}") from None
    elif ffmpeg is not None:
        wave = _read_ffmpeg(path, ffmpeg)
    else:
        raise AudioError(f"{ext or 'this'} files need ffmpeg, which is not on PATH (install it, "
                         f"or convert to {'/'.join(SOUNDFILE_EXTS)})")
    if not np.isfinite(wave).all():
        raise AudioError("audio holds NaN or infinite samples")
    return wave


def probe_seconds(path: str | os.PathLike) -> Optional[float]:
    """The file's duration in seconds from its header (soundfile, else ffprobe), or None if unknown.

    Cheap: used to sort files by length for batching and to size the progress bar.
    """
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() in SOUNDFILE_EXTS:
        import soundfile as sf
        try:
            info = sf.info(path)
            if info.samplerate > 0:
                return info.frames / info.samplerate
        except Exception:
            pass
    ffprobe = find_ffprobe()
    if ffprobe is None:
        return None
    cmd = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries", "format=duration",
           "-of", "default=noprint_wrappers=1:nokey=1", path]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        return float(res.stdout.strip().splitlines()[0])
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return None
