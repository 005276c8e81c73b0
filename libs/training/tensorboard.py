"""A TensorBoard writer that is safe everywhere: a no-op on non-main ranks or without tensorboard."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

log = logging.getLogger(__name__)


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

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
