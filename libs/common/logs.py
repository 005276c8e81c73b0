"""Logging set-up for the entry scripts.

``setup_logging`` configures the root logger: console (stderr) and, optionally, a file, both with
``%(asctime)s %(levelname)s %(message)s``. Processes other than rank 0 log WARNING and above only,
to the console. Calling it again replaces the handlers it installed earlier (idempotent).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Union

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_MARK = "_libs_utils_logging_handler"


def setup_logging(log_file: Optional[Union[str, Path]] = None, rank: int = 0,
                  level: int = logging.INFO) -> logging.Logger:
    """Configure and return the root logger (see module docstring). ``log_file``'s folder is
    created if needed; the file is appended to (a resumed run keeps its earlier log).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()
    effective = level if rank == 0 else max(level, logging.WARNING)
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and rank == 0:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.setLevel(effective)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(effective)
    logging.captureWarnings(True)
    return root
