"""eval.py with a fault injected into one process, for the torchrun failure tests of
tests/evaluation/test_distributed_eval.py (not a test module itself):

    FAULT=raise|stall FAULT_RANK=1 torchrun --nproc_per_node 2 tests/evaluation/dist_fault_eval.py \
        EVAL_ARGS...

On rank FAULT_RANK the per-batch inference (``libs.evaluation.predict.predict``) either raises
at once (``raise``) or hangs for ten minutes (``stall``, a process that never answers).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import eval as eval_cli  # noqa: E402
import libs.evaluation.predict as predict_module  # noqa: E402
from libs.common.errors import run_cli  # noqa: E402


def _inject(fault: str) -> None:
    def broken(*args, **kwargs):
        if fault == "raise":
            raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")
        time.sleep(600)
    predict_module.predict = broken


if __name__ == "__main__":
    if os.environ.get("RANK") == os.environ["FAULT_RANK"]:
        _inject(os.environ["FAULT"])
    run_cli(eval_cli.main)
