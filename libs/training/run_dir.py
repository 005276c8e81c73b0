"""Run folders: ``<output_folder>/<config stem>_<name>/``, where ``name`` is ``--output`` or a
timestamp ``YYYYmmdd-HHMMSS`` (no spaces or colons, unlike the original; ``-2``, ``-3``, ... when
several runs start in the same second).

A run folder belongs to one ``train.py`` for the run's life: :func:`claim_run_dir` creates it (a
timestamp folder exclusively) and holds an exclusive ``flock`` on ``<folder>/.lock`` until the
run ends; the kernel drops the lock when the process dies, so a killed run never leaves a stale
lock. A second run into a held folder is a one-line error. Under the lock, the temp files of a
writer killed mid-write (``.<name>.XXXXXXXX.tmp``) are removed.

The training checkpoints of a folder (:func:`run_checkpoints`): ``epoch_NNN.pth.tar``,
``best.pth.tar`` and ``interrupted.pth.tar`` (written on SIGTERM), ordered by progress
``(epoch, epoch_step)``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Tuple

from libs.common.checkpoints import EPOCH_FILE_RE, PathLike, list_checkpoints, load_checkpoint
from libs.common.errors import UserError
from libs.common.io import check_output_folder, describe_os_error, remove_stale_temp_files

log = logging.getLogger(__name__)

BEST_NAME = "best.pth.tar"
INTERRUPTED_NAME = "interrupted.pth.tar"
LOCK_NAME = ".lock"
_NAME_BAD = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_SAME_SECOND = 1000
Progress = Tuple[int, int]   # (epochs completed, batches of the next epoch)


def timestamp() -> str:
    """Local time as ``YYYYmmdd-HHMMSS``."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime())


def experiment_dir(output_folder: PathLike, config_path: PathLike, output_name: Optional[str] = None) -> Path:
    """``<output_folder>/<config stem>_<output_name or timestamp>``; characters other than
    letters, digits and ``._+-`` in the name become ``_`` (no spaces, colons or separators).
    """
    stem = Path(config_path).name
    for ext in (".yaml", ".yml"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    suffix = output_name if output_name not in (None, "") else timestamp()
    name = _NAME_BAD.sub("_", f"{stem}_{suffix}").strip("_")
    if name in ("", ".", ".."):
        raise UserError(f"bad experiment name ({output_name!r}): expected letters, digits or ._+-")
    return Path(output_folder) / name


def checkpoint_progress(path: PathLike) -> Progress:
    """``(epoch, epoch_step)`` of a training checkpoint: from the name of ``epoch_NNN.pth.tar``,
    else read from the file (memory-mapped: only the small values are read)."""
    path = Path(path)
    match = EPOCH_FILE_RE.match(path.name)
    if match:
        return int(match.group(1)), 0
    return progress_of(load_checkpoint(path, mmap=True))


def progress_of(ckpt: Mapping[str, Any]) -> Progress:
    """``(epochs completed, steps into the next epoch)`` recorded in a training checkpoint."""
    return int(ckpt.get("epoch", 0)), int(ckpt.get("epoch_step", 0))


def run_checkpoints(folder: PathLike) -> List[Tuple[Optional[Progress], Path]]:
    """The training checkpoints of ``folder``, newest first (an epoch file before a
    best/interrupted file of the same progress); unreadable best/interrupted files last, with
    progress None."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found: List[Tuple[Optional[Progress], int, Path]] = [
        ((e, 0), 2, p) for e, p in list_checkpoints(folder).items()]
    for rank, name in ((1, BEST_NAME), (0, INTERRUPTED_NAME)):
        p = folder / name
        if p.is_file():
            try:
                found.append((checkpoint_progress(p), rank, p))
            except UserError:
                found.append((None, rank, p))
    known = sorted((x for x in found if x[0] is not None), key=lambda x: (x[0], x[1]), reverse=True)
    return [(prog, p) for prog, _, p in known] + [(None, p) for prog, _, p in found if prog is None]


def describe_progress(progress: Progress) -> str:
    epoch, step = progress
    return f"epoch {epoch}" + (f" + {step} iterations" if step else "")


class RunFolder:
    """A claimed run folder: ``path`` and the lock held until :meth:`release` (or exit)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.removed_temps = 0
        self._fd: Optional[int] = fd

    def remove_stale_temps(self) -> int:
        """Delete the temp files of killed writes (safe: this run holds the folder)."""
        self.removed_temps += remove_stale_temp_files(self.path)
        return self.removed_temps

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(path: Path) -> int:
    """An exclusive flock on ``path/.lock`` (created if needed); a UserError if another process
    holds it."""
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise UserError(f"cannot create the run folder's lock ({lock_path}): "
                        f"{describe_os_error(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(f"run folder is in use by another train.py ({path}"
                            f"{', ' + holder if holder else ''}): wait for it to end or choose "
                            f"another --output NAME") from None
        raise UserError(f"cannot lock the run folder ({lock_path}): {describe_os_error(err)}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    return fd


def _make_folder(path: Path, unique: bool) -> Path:
    """Create ``path`` (with parents); with ``unique``, exclusively, trying ``path-2``, ``-3``, ...
    while the name is taken (runs started in the same second)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"experiment folder is a file ({path}): expected a folder")
    check_output_folder(path.parent, "the experiment folder", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not unique:
            path.mkdir(exist_ok=True)
            return path
        for i in range(1, _MAX_SAME_SECOND + 1):
            candidate = path if i == 1 else path.with_name(f"{path.name}-{i}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as err:
        raise UserError(f"cannot create the experiment folder ({path}): "
                        f"{describe_os_error(err)}") from None
    raise UserError(f"cannot create a unique experiment folder ({path}): {_MAX_SAME_SECOND} runs "
                    f"in one second; pass --output NAME")


def claim_run_dir(path: PathLike, unique: bool = False) -> RunFolder:
    """Create and lock the run folder ``path`` (``unique``: a timestamp name, see
    :func:`_make_folder`). Check the inputs of the run (data, checkpoint) before this call, so a
    failed start leaves no folder behind."""
    folder = _make_folder(Path(path), unique)
    return RunFolder(folder, _lock(folder))


def check_fresh_folder(folder: PathLike) -> None:
    """A fresh run refuses a folder that already holds training checkpoints, so runs never mix."""
    existing = run_checkpoints(folder)
    if existing:
        raise UserError(
            f"experiment folder already holds checkpoints ({folder}, newest "
            f"{existing[0][1].name}): choose another name with --output NAME, or continue that "
            f"run with --resume auto (the same --output) or --resume {folder}")


def check_resume_target(folder: PathLike, resume_path: PathLike, progress: Progress,
                        ignore: Iterable[PathLike] = ()) -> None:
    """Resuming into ``folder`` from ``resume_path`` (at ``progress``) must replace no newer
    checkpoint: a folder of another run must hold none, the run's own folder none newer than
    ``progress`` (``ignore``: unloadable files that --resume auto skipped)."""
    folder = Path(folder).resolve()
    resume_path = Path(resume_path).resolve()
    skip = {Path(p).resolve() for p in ignore}
    existing = [(prog, p) for prog, p in run_checkpoints(folder) if p.resolve() not in skip]
    if resume_path.parent != folder:
        if existing:
            raise UserError(f"experiment folder already holds checkpoints of another run "
                            f"({folder}): resume {resume_path} into an empty folder (--output NAME)")
        return
    newer = [f"{p.name} ({describe_progress(prog) if prog else 'unreadable'})"
             for prog, p in existing if prog is None or prog > progress]
    if newer:
        raise UserError(
            f"cannot resume {describe_progress(progress)} ({resume_path}) into its run folder: it "
            f"holds newer checkpoints that the run would replace: {', '.join(newer)}; resume from "
            f"the newest (--resume auto or --resume {folder}) or branch into a new folder with "
            f"--output NAME")
