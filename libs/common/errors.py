"""User-facing errors and the CLI wrapper that turns them into one line and exit status 2.

Convention (docs/differences.md s.5.5): a message reads ``<what> (<where>): <expected>``, e.g.
``unknown config key 'opt.learning_rat' (configs/x.yaml): did you mean 'opt.learning_rate'?``.
Raise :class:`UserError` for mistakes a user can fix (bad file, key, value, annotation);
use ``assert`` only for our own invariants.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Iterable, Optional

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input. ``str(err)`` is the one-line message (without 'error: ')."""


def format_problems(problems: Iterable[str], head: str, limit: int = 20) -> str:
    """Join many problems into one line: ``head: p1; p2; ... (and N more)``.

    Used where all problems are reported at once (e.g. every missing feature file of a split).
    """
    problems = list(problems)
    shown = problems[:limit]
    msg = f"{head}: " + "; ".join(shown)
    if len(problems) > limit:
        msg += f" (and {len(problems) - limit} more)"
    return msg


def run_cli(main: Callable[[Optional[list]], Optional[int]], argv: Optional[list] = None) -> None:
    """Run ``main(argv)``; a :class:`UserError` prints ``error: <message>`` on stderr and exits 2.

    Any other exception is a bug of ours and keeps its traceback.
    """
    try:
        code = main(argv)
    except UserError as err:
        logging.shutdown()
        msg = " ".join(str(err).split("\n"))
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
