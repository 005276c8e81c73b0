"""Requeue-safe stopping: SIGTERM (what a cluster scheduler sends before it kills a job) and
SIGINT (Ctrl-C) end a training run with a resumable checkpoint (README: reliability).

The first signal only sets a flag (:class:`StopSignals`). The training loader, wrapped in
:class:`StoppableLoader`, raises :class:`StopTraining` at the next optimizer-step boundary, i.e.
when the loop asks for the first micro-batch of a step that has not started; every step already
begun is finished (its schedule, EMA and normaliser updates included). ``train.py`` then writes
``interrupted.pth.tar`` and exits with :data:`EXIT_REQUEUE`. A signal that arrives between epochs
(validation, checkpoint writes) lets that work finish first. A second signal stops at once: SIGINT
raises ``KeyboardInterrupt``, SIGTERM kills the process with the default action (writes are
atomic, so no final file is ever truncated). DataLoader workers ignore both signals
(``libs/datasets/loader.py``): the main process shuts them down.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Dict, Iterator, Optional

from libs.common.distributed import all_reduce_sum

log = logging.getLogger(__name__)

EXIT_REQUEUE = 75   # sysexits.h EX_TEMPFAIL: "temporary failure, try again" (resume with --resume auto)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopTraining(Exception):
    """Raised by :class:`StoppableLoader` at a step boundary once a stop was requested."""


class StopSignals:
    """A context manager that turns the first SIGTERM/SIGINT into a stop request.

    ``requested`` tells whether one arrived (``signal_name`` which). Handlers are installed only in
    the main thread (elsewhere, e.g. a test runner's thread, it does nothing) and the previous
    handlers come back on exit.
    """

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:     # the second signal: stop now
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signal_name = name
        log.warning("%s received: finishing the current step, then writing a resumable checkpoint "
                    "(send it again to stop at once)", name)

    def agreed(self) -> bool:
        """Whether any process of the run was asked to stop (one small all-reduce under
        torch.distributed, so that all ranks stop at the same step; local otherwise)."""
        return float(all_reduce_sum(1.0 if self.requested else 0.0)) > 0

    def request(self, name: str = "request") -> None:
        """Ask for a stop as a signal would (tests, embedding code)."""
        if self.signal_name is None:
            self.signal_name = name

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()


class StoppableLoader:
    """A training loader that raises :class:`StopTraining` instead of handing out the first
    micro-batch of a new optimizer step once a stop is requested (on any process:
    :meth:`StopSignals.agreed`); ``len()`` is the loader's.

    ``micro_batches`` counts the batches handed out since the last ``iter()``, so
    ``micro_batches // accum_steps`` is the number of optimizer steps completed when it stops.
    """

    def __init__(self, loader: Any, stop: StopSignals, accum_steps: int) -> None:
        assert accum_steps >= 1, accum_steps
        self.loader = loader
        self.stop = stop
        self.accum_steps = int(accum_steps)
        self.micro_batches = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.micro_batches = 0
        inner = iter(self.loader)
        while True:
            if self.micro_batches % self.accum_steps == 0 and self.stop.agreed():
                raise StopTraining(self.stop.signal_name or "a stop on another process")
            try:
                batch = next(inner)
            except StopIteration:
                return
            self.micro_batches += 1
            yield batch

    @property
    def steps_done(self) -> int:
        """Optimizer steps whose micro-batches were all handed out (since the last ``iter()``)."""
        return self.micro_batches // self.accum_steps
