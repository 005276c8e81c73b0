"""Seeding, determinism switches and RNG state capture for exact resume (docs/numerics.md s.9.6).

``get_rng_state()`` returns only tensors and plain Python values, so it can be stored in a
checkpoint and read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Dict

import numpy as np
import torch

log = logging.getLogger(__name__)


def fix_random_seed(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed python ``random``, numpy, torch (CPU and every CUDA device) and ``PYTHONHASHSEED``.

    With ``deterministic``: cudnn deterministic with benchmark off,
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (must be set before the first cuBLAS call to take effect).
    Without it, cudnn benchmark is on. Returns a ``torch.Generator`` seeded with ``seed``
    (e.g. for a DataLoader's shuffling).
    """
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
        torch.use_deterministic_algorithms(False)
    gen = torch.Generator()
    gen.manual_seed(seed)
    log.debug("random seed %d (deterministic=%s)", seed, deterministic)
    return gen


def get_rng_state() -> Dict[str, Any]:
    """Capture python, numpy and torch CPU (and CUDA, if available) generator states."""
    np_state = np.random.get_state(legacy=False)
    assert np_state["bit_generator"] == "MT19937", np_state["bit_generator"]
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore a ``get_rng_state()`` capture. CUDA states are restored when present and CUDA is
    available (a CPU-only resume of a GPU run skips them, and the reverse keeps CUDA's own state).
    """
    py = state["python"]
    # a checkpoint round trip may turn the inner tuple into a list
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state({
        "bit_generator": npst["bit_generator"],
        "state": {"key": np.asarray(npst["key"].cpu().numpy(), dtype=np.uint32),
                  "pos": int(npst["pos"])},
        "has_gauss": int(npst["has_gauss"]),
        "gauss": float(npst["gauss"]),
    })
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        n = min(len(cuda_states), torch.cuda.device_count())
        if n != len(cuda_states):
            log.warning("restoring %d of %d saved CUDA RNG states (device count differs)", n,
                        len(cuda_states))
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i].cpu(), i)
