"""benchmarks/gpu_check.sh without a GPU: the CPU rehearsal runs the end-to-end checks (fp32, bf16,
distributed eval) and skips the CUDA build without touching the built extension; the default
(CUDA) mode stops before deleting anything when no GPU is visible."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _extension_files():
    # names only: another job of this shared checkout may rebuild the extension meanwhile
    return sorted(p.name for p in (ROOT / "libs" / "ops").glob("_nms_ext*"))


def _run(**env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHON": sys.executable,
                                            "OMP_NUM_THREADS": "1", **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: run the real check")
def test_cuda_mode_without_a_gpu_fails_before_touching_the_extension():
    before = _extension_files()
    proc = _run()
    assert proc.returncode == 1
    assert "gpu_check: FAILED: no CUDA device visible" in proc.stderr
    assert _extension_files() == before


@pytest.mark.skipif(os.environ.get("SKIP_DIST_TESTS") == "1", reason="SKIP_DIST_TESTS=1")
def test_cpu_rehearsal_runs_the_end_to_end_checks():
    before = _extension_files()
    proc = _run(GPU_CHECK_DEVICE="cpu", GPU_CHECK_COMPILE="0", GPU_CHECK_BENCH="0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("GPU check (cpu): summary")[1]
    assert "build: skipped (cpu rehearsal); NMS tests: skipped (cpu rehearsal)" in summary
    assert "check: fp32 train+eval on cpu: average mAP" in summary
    assert "check: bf16 train" in summary and "eval --amp bf16 on cpu" in summary
    assert "check: train.compile: skipped" in summary
    assert "check: unified action + sound model on cpu: headline" in summary
    assert ("check: distributed eval (torchrun --nproc_per_node 1, gloo) on cpu: submission "
            "identical to single-process") in summary
    assert _extension_files() == before
