"""--threads: torch's intra-op pool is set and logged; a bad value is a user error."""
import argparse
import logging

import pytest
import torch

from libs.common.errors import UserError
from libs.common.threads import add_threads_arg, apply_threads


def test_threads_set_and_logged(caplog):
    p = argparse.ArgumentParser()
    add_threads_arg(p)
    assert p.parse_args([]).threads is None
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO):
            assert apply_threads(p.parse_args(["--threads", "1"]).threads, 3) == 1
        assert torch.get_num_threads() == 1
        assert "torch CPU threads 1, loader workers 3" in caplog.text
        assert apply_threads(None, 0) == 1          # None leaves the setting alone
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match="--threads 0"):
        apply_threads(0, 0)
