"""Atomic file writes: every output (configs, checkpoints, submissions, metrics, raw candidates,
packed features) is written to a temp file in the destination folder and renamed onto its path,
so a crash never leaves a half-written file over a good one (docs/differences.md s.5.4).
A failed write (no space left, a read-only or missing folder, a path through a file) is one
:class:`UserError` naming the file and the cause, with the previous file intact; the temp files
of a killed writer are named ``.<name>.<8 characters>.tmp`` and found by :func:`stale_temp_files`.
Output paths are checked before long work with :func:`check_output_file`."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

from libs.common.errors import UserError

log = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")   # tempfile.mkstemp's 8 random characters


def os_error_in(err: BaseException) -> Optional[OSError]:
    """The first :class:`OSError` in ``err`` and its cause/context chain (``torch.save`` turns a
    failed write into ``RuntimeError: [enforce fail at inline_container.cc]`` with the OSError as
    its context), or None."""
    seen = set()
    cur: Optional[BaseException] = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def describe_os_error(err: OSError) -> str:
    """``strerror`` (e.g. 'No space left on device'), or the errno name, or the text."""
    if err.strerror:
        return err.strerror
    if err.errno is not None:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "output") -> Iterator[str]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temp file exists (empty) when the block starts and gets normal permissions (0666 & ~umask),
    not mkstemp's 0600. A folder that cannot be written, and an OSError raised by the block or the
    rename (anywhere in the exception chain: ENOSPC, EACCES, ENOTDIR, EROFS, ...), is a UserError
    naming ``path`` and the cause; the previous ``path`` is untouched and the temp file removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write {what} ({path}): {describe_os_error(err)}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        cause = os_error_in(err)
        if cause is None:
            raise
        raise UserError(f"cannot write {what} ({path}): {describe_os_error(cause)}; the previous "
                        f"file, if any, is unchanged") from err
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "output") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, what) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def stale_temp_files(folder: str | os.PathLike) -> List[Path]:
    """The temp files :func:`atomic_path` left in ``folder`` (not recursive): a writer that was
    killed mid-write. Only the caller knows that no writer is active there (a locked run folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMP_RE.match(p.name) and p.is_file())


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete :func:`stale_temp_files` of ``folder``; returns how many were removed."""
    count = 0
    for p in stale_temp_files(folder):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            count += 1
    return count


def check_output_file(path: str | os.PathLike, what: str, overwrite: bool = True) -> None:
    """Check, before any long work, that ``path`` can be written: not a folder, not an existing
    file unless ``overwrite``, and its nearest existing ancestor a writable folder (the missing
    ones are created when written). A UserError naming ``what``, the path and the cause."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {what} ({path}): it is a folder; expected a file path")
    if path.exists() and not overwrite:
        raise UserError(f"{what} exists ({path}): pass --overwrite to replace it or choose another "
                        f"path")
    check_output_folder(path.parent, what, path)


def check_output_folder(folder: str | os.PathLike, what: str,
                        target: Optional[str | os.PathLike] = None) -> None:
    """``folder`` is, or can be created as, a writable folder; else a UserError naming ``what``,
    ``target`` (default: the folder) and the cause (a file in the way, no permission)."""
    folder = Path(os.path.abspath(folder))
    shown = target if target is not None else folder
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write {what} ({shown}): {probe} is a file, not a folder "
                        f"({os.strerror(errno.ENOTDIR)})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} ({shown}): folder {probe} is not writable "
                        f"({os.strerror(errno.EACCES)})")
