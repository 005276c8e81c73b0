"""Thin helpers over ``torch.distributed`` (one process per device, launched by torchrun), and
the device's mixed precision (autocast dtypes).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything runs as a single process
and every helper is a cheap no-op, so the training loop calls them unconditionally.

A process that raises exits non-zero and torchrun stops the others at once. A process that stalls
(or dies where torchrun cannot see it, on another node) makes the others' next collective fail
after the process group's timeout (config key ``train.dist_timeout``, seconds);
:func:`gather_to_main` and :func:`barrier` turn that into one ``error:`` line naming the step and
the timeout.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, ContextManager, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from libs.common.errors import UserError

log = logging.getLogger(__name__)

# autocast dtype of each ``train.amp`` / ``eval.py --amp`` value ('none': full fp32)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_timeout_s: Optional[float] = None   # the process group's timeout, for error messages


class PeerError(UserError):
    """A collective failed: another process raised, died or stalled past ``train.dist_timeout``."""


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
    """The plain module inside DistributedDataParallel / DataParallel / ``torch.compile``
    wrappers (any nesting), else ``model``."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):   # torch.compile
            model = model._orig_mod
        else:
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


def init_distributed(device: str, timeout_s: Optional[float] = None) -> DistInfo:
    """Set up the process group from torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (also
    for ``--nproc_per_node 1``, so that one process runs the distributed code paths).

    ``device`` is ``'cpu'``, ``'cuda'`` or ``'cuda:N'``. Under torchrun with CUDA each process
    uses ``cuda:<LOCAL_RANK>`` and the NCCL backend; on CPU the gloo backend. ``timeout_s``
    (config ``train.dist_timeout``; None: torch's default) bounds how long any collective waits
    for the other processes before it fails (gloo raises; NCCL's watchdog aborts the process).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"CUDA is not available (device '{device}'): expected a GPU build of "
                        "PyTorch and a visible GPU, or use device cpu")
    if world_size <= 1 and not dist.is_torchelastic_launched():   # plain python: no group
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
        kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    global _timeout_s
    _timeout_s = timeout_s
    log.info("process %d/%d (local rank %d) on %s, backend %s, timeout %s", rank, world_size,
             local_rank, dev, backend, "torch's default" if timeout_s is None else f"{timeout_s:g} s")
    return DistInfo(rank, world_size, local_rank, dev)


def is_distributed() -> bool:
    """Whether a default process group exists (torchrun, any number of processes)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` without one."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _peer_error(what: str, err: Exception) -> PeerError:
    rank, world = rank_and_world()
    limit = ("torch's default timeout" if _timeout_s is None
             else f"train.dist_timeout ({_timeout_s:g} s)")
    first = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
    return PeerError(f"{what} failed (process {rank} of {world}): another process raised, died or "
                     f"did not answer within {limit}; that process's own error, if it had one, is "
                     f"above [{type(err).__name__}: {first}]")


def gather_to_main(obj: Any, what: str) -> Optional[List[Any]]:
    """Every process's picklable ``obj`` as a list in rank order on rank 0; None on the other
    ranks; ``[obj]`` without a process group. A failed or timed-out peer raises
    :class:`PeerError` naming ``what``."""
    if not is_distributed():
        return [obj]
    rank, world = rank_and_world()
    out: Optional[List[Any]] = [None] * world if rank == 0 else None
    try:
        dist.gather_object(obj, out, dst=0)
    except (RuntimeError, dist.DistError) as err:
        raise _peer_error(what, err) from err
    return out


def barrier(what: str) -> None:
    """Wait for every process (no-op without a process group); a failed or timed-out peer raises
    :class:`PeerError` naming ``what``."""
    if not is_distributed():
        return
    try:
        dist.barrier()
    except (RuntimeError, dist.DistError) as err:
        raise _peer_error(what, err) from err


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls and convs in hardware (AVX512-BF16 or AMX).
    Without either (e.g. an AVX2-only CPU) oneDNN and MKL fall back to slow emulation: measured
    on an AVX2 AMD EPYC, one thread, a (3072, 512) x (512, 2048) matmul 9x and a width-512
    kernel-3 conv 35x slower than in float32 (README: mixed precision)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def check_amp(amp: str, device: torch.device, where: str) -> None:
    """A one-line error unless ``amp`` ('none', 'bf16', 'fp16') runs on ``device``: fp16 needs
    CUDA (with a GradScaler in training); bf16 needs a CPU or a GPU that supports it. bf16 on a
    CPU without native bfloat16 (:func:`cpu_has_native_bf16`) runs, with a warning: the results
    are right but many times slower than float32."""
    if amp == "fp16" and device.type != "cuda":
        raise UserError(f"mixed precision fp16 ({where}) on {device.type}: expected a CUDA device; "
                        f"use bf16 on CPU")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"mixed precision bf16 ({where}): this GPU does not support bfloat16; use "
                        f"fp16 or none")
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("mixed precision bf16 (%s) on a CPU without native bfloat16 (no AVX512-BF16 "
                    "or AMX; torch capability %s): it runs emulated, many times slower than "
                    "float32 (a matmul 9x, a conv 35x on an AVX2 CPU); use none on this machine",
                    where, torch.backends.cpu.get_cpu_capability())


def autocast(amp: str, device: torch.device) -> ContextManager:
    """``torch.autocast`` to ``AMP_DTYPES[amp]`` on ``device``'s type; a no-op for 'none'.
    Wrap the model's forward only: losses, decoding and NMS run in fp32 outside it."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


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
