"""libs/common/seed.py: the determinism switches."""
from __future__ import annotations

import torch

from libs.common.seed import fix_random_seed


def _restore(mode: bool, warn: bool) -> None:
    torch.use_deterministic_algorithms(mode, warn_only=warn)


def test_fix_random_seed_switches_deterministic_algorithms_warn_only():
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        fix_random_seed(3, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.backends.cudnn.benchmark
        fix_random_seed(3, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark
    finally:
        _restore(*before)
        torch.backends.cudnn.benchmark = False
