"""Check a challenge submission before upload (the same as ``score_submission.py --check``).

    python tools/check_submission.py ANNOTATIONS [ANNOTATIONS ...] SUBMISSION --task T [T ...]
        --split S [--num-classes K | TASK=K[,TASK=K]] [--max-seg-num N | TASK=N[,...]] [--strict]

Valid: every video of the split present and no other, the task key in every video, label ids in
``[0, K)`` (default: the challenge's 12 sound / 63 action classes), finite scores, at most N
entries per video (default ``test_cfg.nms.max_seg_num``), no video id twice, reversed or
non-finite timestamps nowhere. Predictions outside their video are a warning (an error with
``--strict``). Exit 0 and one summary line when valid; otherwise one ``error:`` line, exit 2.
Several tasks (a unified model's submission): every video must hold every task's list, and each
list is checked against its task's class count and limit (``--num-classes TASK=K``,
``--max-seg-num TASK=N``); the annotations may be one file or one file per task.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import score_submission  # noqa: E402

from libs.common.errors import run_cli  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    return score_submission.main(argv, check_only=True)


if __name__ == "__main__":
    run_cli(main)
