"""Atomic file writes: every output (configs, checkpoints, submissions, metrics, raw candidates,
packed features) is written to a temp file in the destination folder and renamed onto its path,
so a crash never leaves a half-written file over a good one (SPEC s.4, s.7)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from libs.common.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "output") -> Iterator[str]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temp file exists (empty) when the block starts and gets normal permissions (0666 & ~umask),
    not mkstemp's 0600. A folder that cannot be written is a UserError naming ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write {what} ({path}): {err.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "output") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, what) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
