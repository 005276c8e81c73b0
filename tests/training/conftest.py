"""Fixtures of the training tests: a tiny demo dataset (helpers: train_helpers.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from tools.make_demo_data import generate_demo_data


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("train_demo")
    data = root / "data"
    generate_demo_data(data, seed=0, num_train=4, num_valid=2, num_test=2, min_duration=4.0,
                       max_duration=6.0)
    return {"root": root, "data": data}
