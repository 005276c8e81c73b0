"""Requeue-safe SIGTERM/SIGINT: the run finishes the step it began, writes a resumable
``interrupted.pth.tar``, exits with status 75 and leaves no temp file; ``--resume auto`` then
ends bit for bit where the uninterrupted run ends (mid-epoch included)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import train as train_cli
from libs.common.io import stale_temp_files
from libs.training.signals import EXIT_REQUEUE, StopSignals, StoppableLoader
from train_helpers import ROOT, assert_same_training_state, load, train_argv


def test_first_signal_requests_a_stop_second_sigint_interrupts():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)      # a real signal; the handler only sets a flag
        time.sleep(0.01)
        assert stop.requested and stop.signal_name == "SIGTERM" and stop.agreed()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_stoppable_loader_stops_only_at_step_boundaries():
    stop = StopSignals()
    loader = StoppableLoader(list(range(10)), stop, accum_steps=3)
    got = []
    with pytest.raises(Exception) as exc:
        for x in loader:
            got.append(x)
            if x == 3:
                stop.request("test")          # inside the second step: it is finished first
    assert type(exc.value).__name__ == "StopTraining"
    assert got == [0, 1, 2, 3, 4, 5] and loader.steps_done == 2


def stopping_loader(after: int):
    """A StoppableLoader that requests a stop once ``after`` micro-batches were handed out."""
    class Stopping(StoppableLoader):
        total = 0   # over all epochs

        def __iter__(self):
            for batch in super().__iter__():
                Stopping.total += 1
                if Stopping.total == after:
                    self.stop.request("SIGTERM (test)")
                yield batch
    return Stopping


@pytest.mark.parametrize("accum", [1, 2])
def test_stop_in_mid_epoch_then_resume_is_bit_identical(tiny_demo, tmp_path, monkeypatch, accum):
    # batch 1: 4 micro-batches per epoch, 4 // accum steps; 2 epochs
    kw = {"loader.batch_size": 1, "train.accum_steps": accum}
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "ref", **kw)) == 0
    with monkeypatch.context() as m:
        m.setattr(train_cli, "StoppableLoader", stopping_loader(after=4 + accum))  # epoch 2, step 2
        assert train_cli.main(train_argv(tiny_demo, tmp_path, "stop", **kw)) == EXIT_REQUEUE
    folder = tmp_path / "demo_tsl_train_stop"
    inter = load(folder / "interrupted.pth.tar")
    assert (inter["epoch"], inter["epoch_step"], inter["global_step"]) == (1, 1, 4 // accum + 1)
    assert stale_temp_files(folder) == [] and not (folder / "epoch_002.pth.tar").exists()
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "stop", "--resume", "auto", **kw)) == 0
    assert_same_training_state(load(tmp_path / "demo_tsl_train_ref" / "epoch_002.pth.tar"),
                               load(folder / "epoch_002.pth.tar"))
    assert not (folder / "interrupted.pth.tar").exists()     # superseded by epoch_002


def test_real_sigterm_to_the_process_group_with_two_workers(tiny_demo, tmp_path):
    kw = {"loader.batch_size": 1, "loader.num_workers": 2, "opt.epochs": 4, "train.ckpt_freq": 5}
    argv = train_argv(tiny_demo, tmp_path, "term", **kw)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        # a scheduler signals every process of the job: the workers as well as train.py
        proc = subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, stderr=err,
                                stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 120
            while "epoch 1/5" not in log.read_text() and proc.poll() is None:
                assert time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == EXIT_REQUEUE, text[-3000:]
    assert "Traceback" not in text and "SIGTERM received" in text and "stopped by SIGTERM" in text
    folder = tmp_path / "demo_tsl_train_term"
    assert stale_temp_files(folder) == []
    assert not (folder / "epoch_005.pth.tar").exists()
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "term", "--resume", "auto", **kw)) == 0
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "ref", **kw)) == 0
    assert_same_training_state(load(tmp_path / "demo_tsl_train_ref" / "epoch_005.pth.tar"),
                               load(folder / "epoch_005.pth.tar"))
