"""check_amp: which mixed precision runs where, and the warning for emulated bf16 on a CPU."""
import logging

import pytest
import torch

from libs.common import distributed
from libs.common.distributed import check_amp, cpu_has_native_bf16
from libs.common.errors import UserError

CPU = torch.device("cpu")


def _cpu_features(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize("avx512_bf16,amx,native", [(False, False, False), (True, False, True),
                                                    (False, True, True), (True, True, True)])
def test_native_bf16_is_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    _cpu_features(monkeypatch, avx512_bf16, amx)
    assert cpu_has_native_bf16() is native


def test_emulated_bf16_on_cpu_warns_once_per_call_and_runs(monkeypatch, caplog):
    _cpu_features(monkeypatch, False, False)
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        check_amp("bf16", CPU, "train.amp")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "train.amp" in msg and "without native bfloat16" in msg and "use none" in msg


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_no_warning_with_native_bf16_or_without_amp(monkeypatch, caplog, amp):
    _cpu_features(monkeypatch, False, True)
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        check_amp(amp, CPU, "--amp")
    _cpu_features(monkeypatch, False, False)
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        check_amp("none", CPU, "--amp")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_fp16_on_cpu_is_a_user_error():
    with pytest.raises(UserError, match=r"fp16 \(--amp\) on cpu: expected a CUDA device"):
        check_amp("fp16", CPU, "--amp")
