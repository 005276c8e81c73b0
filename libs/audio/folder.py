"""Extract BEATs features for every audio/video file of a folder into ``.npy`` files or one ``.h5``.

Output: one float32 ``(8 T', C)`` array per input file, named by the file stem (the video id):
``<out>/<stem>.npy``, or a dataset ``<stem>`` in the ``.h5`` file (the layout
``libs.datasets.features.FeatureSource`` reads). Every file is written atomically (temp file +
rename); the ``.h5`` file is renamed into place once, at the end of the run.

Per-file problems (unreadable, no audio, silent, shorter than one patch) are logged, skipped and
summarised; existing outputs are skipped unless ``overwrite``. Input and output mistakes that
concern the whole run (no such folder, two inputs with the same stem, ...) raise UserError.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from libs.common.errors import UserError, format_problems
from libs.common.io import atomic_path

from .beats import BEATs
from .extract import BatchRunner, chunk_sizes, min_samples
from .media import FFMPEG_EXTS, SOUNDFILE_EXTS, AudioError, find_ffmpeg, probe_seconds, read_audio

logger = logging.getLogger(__name__)

FORMATS = ("npy", "h5")


@dataclass
class Summary:
    """What a run did. ``failed``: ``(path, reason)``; ``seconds``: audio extracted (16 kHz)."""
    extracted: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"extracted {len(self.extracted)} file(s) ({self.seconds / 3600:.3f} h of audio), "
                f"skipped {len(self.skipped)} existing, failed {len(self.failed)}")


def list_inputs(audio_dir: str) -> Tuple[List[Tuple[str, str]], int]:
    """``([(video_id, path)] sorted by id, number of ignored files)`` for the folder's audio and
    video files (not recursive; hidden files and other extensions are ignored). Raises
    UserError for a missing folder, no input or two files with the same stem."""
    if not os.path.isdir(audio_dir):
        raise UserError(f"audio folder not found ({audio_dir}): expected a folder of audio or video files")
    known = SOUNDFILE_EXTS + FFMPEG_EXTS
    by_id: Dict[str, List[str]] = {}
    ignored = 0
    for name in sorted(os.listdir(audio_dir)):
        path = os.path.join(audio_dir, name)
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or not os.path.isfile(path) or not stem:
            continue
        if ext.lower() not in known:
            ignored += 1
            continue
        by_id.setdefault(stem, []).append(path)
    dupes = [f"'{vid}' ({', '.join(os.path.basename(p) for p in ps)})" for vid, ps in by_id.items()
             if len(ps) > 1]
    if dupes:
        raise UserError(format_problems(dupes, f"several files per video id ({audio_dir})") +
                        "; expected one file per stem (the stem is the video id)")
    if not by_id:
        raise UserError(f"no audio or video files ({audio_dir}): expected "
                        f"{'/'.join(SOUNDFILE_EXTS)} files (or {'/'.join(FFMPEG_EXTS[:4])}... with ffmpeg)")
    if find_ffmpeg() is None and any(os.path.splitext(p[0])[1].lower() in FFMPEG_EXTS
                                     for p in by_id.values()):
        logger.warning("ffmpeg is not on PATH: files other than %s will fail (see "
                       "docs/feature_extraction.md)", "/".join(SOUNDFILE_EXTS))
    return [(vid, ps[0]) for vid, ps in sorted(by_id.items())], ignored


class _NpyWriter:
    def __init__(self, out: str) -> None:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UserError(f"output is not a folder ({out}): --format npy writes <out>/<video_id>.npy")
        os.makedirs(out, exist_ok=True)
        self.out = out

    def path(self, vid: str) -> str:
        return os.path.join(self.out, vid + ".npy")

    def exists(self, vid: str) -> bool:
        return os.path.exists(self.path(vid))

    def write(self, vid: str, feats: np.ndarray) -> None:
        with atomic_path(self.path(vid), "features") as tmp:
            with open(tmp, "wb") as f:                  # a handle: np.save would append .npy to the name
                np.save(f, feats, allow_pickle=False)

    def close(self, ok: bool) -> None:
        pass


class _H5Writer:
    """Appends to a temp copy of ``out`` (if any) and renames it onto ``out`` in :meth:`close`."""

    def __init__(self, out: str) -> None:
        import h5py

        if not out.lower().endswith(".h5"):
            raise UserError(f"--format h5 output does not end in .h5 ({out}): expected a file name "
                            "like beats.h5")
        if os.path.isdir(out):
            raise UserError(f"output is a folder ({out}): --format h5 writes one .h5 file")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        self.out = out
        self.keys: set = set()
        if os.path.exists(out):
            try:
                with h5py.File(out, "r") as f:
                    self.keys = set(f.keys())
            except OSError as err:
                raise UserError(f"existing output is not a readable HDF5 file ({out}): {err}; "
                                "expected a .h5 file from this tool (or remove it)") from None
        self._ctx = atomic_path(out, "features")
        self._tmp = self._ctx.__enter__()
        try:
            if self.keys:
                shutil.copyfile(out, self._tmp)        # keep the existing datasets
            self._h5 = h5py.File(self._tmp, "a" if self.keys else "w")
        except BaseException as err:
            self._ctx.__exit__(type(err), err, None)   # removes the temp file
            raise

    def path(self, vid: str) -> str:
        return f"{self.out}:{vid}"

    def exists(self, vid: str) -> bool:
        return vid in self.keys

    def write(self, vid: str, feats: np.ndarray) -> None:
        if vid in self._h5:
            del self._h5[vid]
        self._h5.create_dataset(vid, data=feats)

    def close(self, ok: bool) -> None:
        self._h5.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            err = RuntimeError("extraction aborted")
            self._ctx.__exit__(type(err), err, None)


def _check_wave(wave: np.ndarray, model: BEATs) -> Optional[str]:
    """Why ``wave`` (16 kHz) cannot be used, or None."""
    need = min_samples(model)
    if wave.shape[0] < need:
        return (f"too short: {wave.shape[0]} samples at 16 kHz ({wave.shape[0] / 16000:.3f} s), expected "
                f">= {need} ({need / 16000:.3f} s)")
    if not np.any(wave):
        return "silent: every sample is zero"
    return None


def extract_folder(model: BEATs, audio_dir: str, out: str, fmt: str = "npy",
                   device: torch.device | str = "cpu", batch_size: int = 1, chunk_seconds: float = 60.0,
                   overlap_seconds: float = 10.0, overwrite: bool = False,
                   progress: bool = True) -> Summary:
    """Extract every file of ``audio_dir`` (see module docstring); returns the :class:`Summary`.

    ``fmt`` 'npy': ``out`` is a folder (created); 'h5': ``out`` is a ``.h5`` file. Files are
    processed shortest first so batches of ``batch_size`` hold similar lengths.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown output format {fmt!r} (--format): expected one of {', '.join(FORMATS)}")
    chunk, overlap = chunk_sizes(model, chunk_seconds, overlap_seconds)
    runner = BatchRunner(model, device, batch_size, chunk, overlap)
    inputs, ignored = list_inputs(audio_dir)
    writer: Any = _NpyWriter(out) if fmt == "npy" else _H5Writer(out)
    summary = Summary(ignored=ignored)
    if ignored:
        logger.info("ignored %d file(s) of %s with other extensions", ignored, audio_dir)
    ok = False
    try:
        todo = []
        for vid, path in inputs:
            if writer.exists(vid) and not overwrite:
                summary.skipped.append(vid)
            else:
                todo.append((vid, path))
        if summary.skipped:
            logger.info("skipping %d video(s) with existing output in %s (pass --overwrite to redo them)",
                        len(summary.skipped), out)
        _run(model, runner, writer, todo, summary, progress)
        ok = True
    finally:
        runner.discard()
        writer.close(ok)
    return summary


def _run(model: BEATs, runner: BatchRunner, writer: Any, todo: List[Tuple[str, str]], summary: Summary,
         progress: bool) -> None:
    durations = {vid: probe_seconds(path) for vid, path in todo}
    todo = sorted(todo, key=lambda t: (durations[t[0]] is None, durations[t[0]] or 0.0, t[0]))
    known = sum(d for d in durations.values() if d is not None)
    unknown = sum(d is None for d in durations.values())
    total = f"{known / 3600:.2f} h of audio" + (f", {unknown} file(s) of unknown length" if unknown else "")
    logger.info("extracting %d file(s): %s", len(todo), total)
    seconds: Dict[str, float] = {}
    bar = tqdm(total=len(todo), unit="file", desc=f"BEATs features ({total})", disable=not progress,
               dynamic_ncols=True)

    def finish(done: List[Tuple[Any, np.ndarray]]) -> None:
        for vid, feats in done:
            writer.write(vid, feats)
            summary.extracted.append(vid)
            summary.seconds += seconds.pop(vid)
            bar.update(1)
        bar.set_postfix_str(f"{summary.seconds / 3600:.2f} h done", refresh=False)

    # log lines are printed above the bar instead of through it
    with (logging_redirect_tqdm() if progress else contextlib.nullcontext()), bar:
        for vid, path in todo:
            try:
                wave = read_audio(path)
                why = _check_wave(wave, model)
                if why is not None:
                    raise AudioError(why)
            except AudioError as err:
                summary.failed.append((path, str(err)))
                logger.warning("cannot use %s (skipped): %s", path, err)
                bar.update(1)
                continue
            seconds[vid] = wave.shape[0] / 16000.0
            finish(runner.add(vid, wave))
        finish(runner.flush())
    assert not seconds, f"unfinished files {sorted(seconds)}"
