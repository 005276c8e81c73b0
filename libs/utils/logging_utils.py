"""Logging set-up for the entry scripts and a TensorBoard writer that is safe everywhere.

``setup_logging`` configures the root logger: console (stderr) and, optionally, a file, both with
``%(asctime)s %(levelname)s %(message)s``. Processes other than rank 0 log WARNING and above only,
to the console. Calling it again replaces the handlers it installed earlier (idempotent).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

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


class TensorboardWriter:
    """``SummaryWriter`` wrapper: a no-op on non-main ranks, when ``log_dir`` is None or when
    tensorboard is not installed (then one WARNING says so).
    """

    def __init__(self, log_dir: Optional[Union[str, Path]], rank: int = 0, **kwargs: Any):
        self._writer = None
        if log_dir is None or rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as err:  # ImportError, or a broken tensorboard/protobuf install
            log.warning("tensorboard unavailable (%s: %s); no TensorBoard logs will be written",
                        type(err).__name__, err)
            return
        self._writer = SummaryWriter(log_dir=str(log_dir), **kwargs)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step)

    def add_scalars(self, main_tag: str, values: Dict[str, float], step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalars(main_tag, {k: float(v) for k, v in values.items()}, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorboardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
