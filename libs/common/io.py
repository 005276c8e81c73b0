"""File I/O helpers: atomic writes and JSON reading with one-line errors.

Atomic file writes: every output (configs, checkpoints, submissions, metrics, raw candidates,
packed features) is written to a temp file in the destination folder and renamed onto its path,
so a crash never leaves a half-written file over a good one (docs/differences.md s.5.4)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

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


def read_json(path: str | os.PathLike, what: str, expected: str) -> Any:
    """Parse the JSON file at ``path``; a missing, unreadable or malformed file is one
    :class:`UserError` naming ``what`` (e.g. 'submission'), the file and ``expected``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} not found ({path}): expected {expected}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {what} ({path}): {err}") from None
    if not text.strip():
        raise UserError(f"{what} is empty ({path}): expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{what} is not valid JSON ({path}): {err.msg} at line {err.lineno} "
                        f"column {err.colno}") from None
