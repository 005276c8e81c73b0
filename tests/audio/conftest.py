"""Shared fixtures of the audio tests: the BEATs golden file (official code, tiny random model)."""
import pytest
import torch

from golden import load_golden
from libs.audio.beats import beats_from_checkpoint

GOLDEN = "tiny_beats.pt"


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def golden():
    return load_golden(GOLDEN)


@pytest.fixture(scope="session")
def tiny_model(golden):
    """The golden tiny model (width 64, 2 layers, 64 buckets, max distance 100), loaded strictly."""
    return beats_from_checkpoint({"cfg": golden["cfg"], "model": golden["model"]}, "golden")


@pytest.fixture(scope="session")
def tiny_ckpt(golden, tmp_path_factory):
    """The tiny model as an official-format checkpoint file."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_beats_ckpt.pt"
    torch.save({"cfg": dict(golden["cfg"]), "model": dict(golden["model"])}, path)
    return str(path)
