"""Checkpoint files: atomic save, safe load, finding ``epoch_NNN.pth.tar`` in a run folder.

Checkpoints are written atomically (a temp file in the same folder, then ``os.replace``), so a
crash never leaves a truncated checkpoint under the final name, and read with
``torch.load(weights_only=True)``: tensors and plain Python values only.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from libs.common.errors import UserError
from libs.common.io import atomic_path

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
EPOCH_FILE_RE = re.compile(r"^epoch_(\d+)\.pth\.tar$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """Write ``state`` with ``torch.save`` atomically to ``path`` (its folder must exist).

    An existing file is replaced (an epoch re-saved after a resume) and an INFO line says so.
    A failed write (no space left, no permission) is a UserError naming the file and the cause;
    the previous file stays intact and no temp file is left (``atomic_path``).
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"cannot save checkpoint ({path}): folder {folder} does not exist")
    replaced = path.exists()
    with atomic_path(path, "checkpoint") as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if replaced:
        log.info("replaced existing checkpoint %s", path)
    return path


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: bool = True,
                    mmap: bool = False) -> Dict[str, Any]:
    """Read a checkpoint dict; UserError naming the file if it is missing, unreadable or not a dict.

    ``weights_only=True`` (default) refuses arbitrary pickled objects; our checkpoints hold only
    tensors and plain Python values. Pass ``False`` only for trusted files with other objects.
    ``mmap=True`` maps the tensors instead of reading them: a cheap look at the small values
    (epoch, best_map) of a large file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found ({path}): expected an existing .pth.tar file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except Exception as err:  # a corrupt file can fail in many ways (pickle, zip, struct, EOF)
        text = _ANSI.sub("", str(err)).strip()
        if weights_only and "unsupported global" in text.lower():
            raise UserError(f"checkpoint holds arbitrary Python objects ({path}): expected tensors "
                            "and plain values only (refused for safety)") from err
        first = text.splitlines()[0][:200] if text else ""
        if "weights only load failed" in first.lower():   # torch's hint about weights_only=False
            first = "not a zip or pickle file written by torch.save"
        raise UserError(f"cannot read checkpoint ({path}): expected a file written by torch.save "
                        f"({type(err).__name__}{': ' + first if first else ''})") from err
    if not isinstance(state, dict):
        raise UserError(f"bad checkpoint ({path}): expected a dict, found {type(state).__name__}")
    return state


def list_checkpoints(folder: PathLike) -> Dict[int, Path]:
    """``{epoch: path}`` of every ``epoch_<N>.pth.tar`` in ``folder`` (any number of digits)."""
    found: Dict[int, Path] = {}
    for p in Path(folder).iterdir():
        match = EPOCH_FILE_RE.match(p.name)
        if match and p.is_file():
            found.setdefault(int(match.group(1)), p)
    return dict(sorted(found.items()))


def find_checkpoint(path: PathLike, epoch: Optional[int] = None) -> Path:
    """Resolve a checkpoint: a file is used as is; in a folder, ``epoch`` picks
    ``epoch_{epoch:03d}.pth.tar`` and ``None`` the highest epoch number.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"checkpoint or experiment folder not found ({path}): expected a "
                        ".pth.tar file or a folder of epoch_NNN.pth.tar files")
    found = list_checkpoints(path)
    if not found:
        raise UserError(f"no checkpoints in folder ({path}): expected epoch_NNN.pth.tar files")
    if epoch is None:
        return found[max(found)]
    if int(epoch) not in found:
        avail = ", ".join(str(e) for e in found)
        raise UserError(f"no checkpoint for epoch {epoch} ({path}): available epochs: {avail}")
    return found[int(epoch)]
