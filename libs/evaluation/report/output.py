"""The report folder: its layout and the rule that an existing report is replaced only on
request (``--overwrite``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

from libs.common.errors import UserError

IMG = "img"                                           # figures live in <report>/img/
OWN_FILES = ("index.html", "report.json", "compare.json")


def check_report_dir(out_dir: str, overwrite: bool = False) -> List[Path]:
    """The report files already in ``out_dir`` (``index.html``, ``report.json``,
    ``compare.json``, ``img/*.png``); any is a :class:`UserError` unless ``overwrite``. Changes
    nothing on disk."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"report output is not a folder ({path}): expected a folder for the report")
    old = [path / f for f in OWN_FILES if (path / f).exists()] + sorted((path / IMG).glob("*.png"))
    if old and not overwrite:
        raise UserError(f"report folder not empty ({path}, {len(old)} report files): pass "
                        "--overwrite to replace them or choose another folder")
    return old


def prepare_report_dir(out_dir: str, overwrite: bool = False) -> Path:
    """Create ``out_dir`` (and ``out_dir/img``) after :func:`check_report_dir`; with
    ``overwrite``, the old report files (nothing else) are deleted first."""
    path = Path(out_dir)
    for f in check_report_dir(out_dir, overwrite):
        f.unlink()
    try:
        (path / IMG).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the report folder ({path}): {err.strerror}") from None
    return path


def safe_name(video_id: str) -> str:
    """A file-name-safe form of a video id (other characters become '_', at most 80)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(video_id))[:80]
