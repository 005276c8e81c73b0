"""Thin helpers over ``torch.distributed`` (one process per device, launched by torchrun).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything runs as a single process
and every helper is a cheap no-op, so the training loop calls them unconditionally.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.distributed as dist

from libs.common.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"bad environment variable {name}={value!r} (torchrun): expected an integer")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The wrapped module of a DistributedDataParallel / DataParallel model, else ``model``."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda`` for train.py / eval.py (see :func:`resolve_device`)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")


def resolve_device(requested: Optional[str]) -> str:
    """``requested`` or, when None, 'cuda' if available else 'cpu'; CUDA without a GPU is an error."""
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' (--device): no CUDA device is available; use --device cpu")
    return name


def init_distributed(device: str) -> DistInfo:
    """Set up the process group from torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``.

    ``device`` is ``'cpu'``, ``'cuda'`` or ``'cuda:N'``. Under torchrun with CUDA each process
    uses ``cuda:<LOCAL_RANK>`` and the NCCL backend; on CPU the gloo backend.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"CUDA is not available (device '{device}'): expected a GPU build of "
                        "PyTorch and a visible GPU, or use device cpu")
    if world_size <= 1:
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} (torchrun): expected fewer processes per node "
                            f"than visible GPUs ({torch.cuda.device_count()})")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.info("process %d/%d (local rank %d) on %s, backend %s", rank, world_size, local_rank, dev,
             backend)
    return DistInfo(rank, world_size, local_rank, dev)


def all_reduce_sum(value: Union[float, torch.Tensor]) -> Union[float, torch.Tensor]:
    """``value`` summed over the ranks of the default process group, as a float64 tensor on the
    backend's device; ``value`` itself when no process group is initialised (a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    if isinstance(value, torch.Tensor):
        buf = value.detach().clone().to(torch.float64)
    else:
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        buf = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
