"""Fixtures shared by the CLI tests."""
from __future__ import annotations

import pytest

from tools.make_demo_data import generate_demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny demo dataset per test module (4 train, 2 valid, 2 test videos of 4-6 s):
    ``{"root": module folder, "data": the dataset under it}``."""
    root = tmp_path_factory.mktemp("demo")
    data = root / "data"
    generate_demo_data(data, seed=0, num_train=4, num_valid=2, num_test=2, min_duration=4.0,
                       max_duration=6.0)
    return {"root": root, "data": data}
