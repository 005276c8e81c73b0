"""Experiment folders: ``<output_folder>/<config stem>_<name>/``, where ``name`` is ``--output`` or
a timestamp ``YYYYmmdd-HHMMSS`` (no spaces or colons, unlike the original)."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import List, Optional

from libs.common.checkpoints import PathLike, list_checkpoints
from libs.common.errors import UserError

_NAME_BAD = re.compile(r"[^A-Za-z0-9._+-]+")


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


def prepare_experiment_dir(path: PathLike, resume: bool) -> Path:
    """Create the experiment folder (with parents) for a fresh run or a resume.

    A fresh run refuses a folder that already holds checkpoints, so two runs never mix; nothing is
    created when that check fails. Resume inputs (the checkpoint file) must be checked by the
    caller *before* this call, so a failed resume leaves no empty folder behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"experiment folder is a file ({path}): expected a folder")
    if path.is_dir() and not resume:
        existing: List[Path] = list(list_checkpoints(path).values())
        if existing:
            raise UserError(
                f"experiment folder already holds checkpoints ({path}): choose another name with "
                f"--output NAME, or continue that run with --resume {existing[-1]}")
    path.mkdir(parents=True, exist_ok=True)
    return path
