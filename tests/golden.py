"""The reference implementation's golden vectors (tests/data/golden/, README beside them)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"
GOLDEN_FILES = ("tiny_actionformer.pt", "tiny_fusion.pt")


@functools.lru_cache(maxsize=None)
def load_golden(name: str) -> dict:
    """One golden file (shipped with the tests, so never skipped), loaded once per session."""
    return torch.load(GOLDEN_DIR / name, weights_only=True)
