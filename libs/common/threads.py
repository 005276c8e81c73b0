"""CPU threads of torch's intra-op pool: ``--threads N`` for the entry scripts.

torch's default is one thread per core. On a machine whose cores are shared (other jobs, or
DataLoader workers next to the main process), OpenMP threads spin while they wait for a core, and
a step can take 50x longer than on a quiet machine; ``--threads`` caps the pool (README: threads).
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional

import torch

from libs.common.errors import UserError

log = logging.getLogger(__name__)


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (default: torch's own choice)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice, one per core); lower it "
                             "on a shared machine")


def apply_threads(threads: Optional[int], num_workers: int) -> int:
    """Set torch's intra-op threads to ``threads`` (None: leave torch's default) and log the
    setting with the loader's worker count; returns the threads in use."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads {threads} (command line): expected a positive number of "
                            f"threads")
        torch.set_num_threads(threads)
    n = torch.get_num_threads()
    log.info("torch CPU threads %d%s, loader workers %d", n,
             "" if threads is not None else " (torch's default; --threads N to change)",
             num_workers)
    return n
