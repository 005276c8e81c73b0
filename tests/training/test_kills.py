"""Crash consistency under real kills: SIGKILL between the two checkpoint writes of an epoch, and
in the middle of a write; the resumed run (``--resume auto``) ends identical to an uninterrupted
one, ``best.pth.tar`` is never older than the best validated epoch that has a checkpoint, and the
killed write's temp file is removed (and counted in the log)."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import train as train_cli
from libs.common.io import stale_temp_files
from libs.training.run_dir import run_checkpoints
from train_helpers import ROOT, assert_same_training_state, load, train_argv

# runs train.py with a hook that SIGKILLs the process at a chosen point of a checkpoint write
KILLER = r"""
import os, signal, sys
import torch
import libs.training.checkpointing as ck
mode, epoch = sys.argv[1], int(sys.argv[2])
real_save, real_torch_save = ck.save_checkpoint, torch.save

def save(state, path):
    if mode == "between":                  # after the first of the epoch's two writes
        real_save(state, path)
        if state["epoch"] == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        real_save(state, path)

def torch_save(obj, f, *a, **k):           # in the middle of writing the epoch's first file
    if mode == "midwrite" and isinstance(obj, dict) and obj.get("epoch") == epoch:
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_torch_save(obj, f, *a, **k)

ck.save_checkpoint, torch.save = save, torch_save
import train
from libs.common.errors import run_cli
run_cli(train.main, sys.argv[3:])
"""

OPTS = {"opt.epochs": 1, "train.eval_freq": 1}    # 2 epochs, each validated and saved


@pytest.fixture(scope="module")
def reference(tiny_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    assert train_cli.main(train_argv(tiny_demo, root, "ref", **OPTS)) == 0
    return root / "demo_tsl_train_ref"


def killed_run(demo, root, mode, epoch, **opts):
    argv = train_argv(demo, root, "k", "--resume", "auto", **{**OPTS, **opts})
    proc = subprocess.run([sys.executable, "-c", KILLER, mode, str(epoch), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    return root / "demo_tsl_train_k"


def assert_best_not_stale(folder):
    """best.pth.tar holds the best validated epoch of every checkpoint in the folder."""
    best = load(folder / "best.pth.tar")
    for _, path in run_checkpoints(folder):
        ck = load(path)
        assert ck["best_epoch"] <= best["epoch"] and ck["best_map"] <= best["best_map"], path.name


def test_kill_between_best_and_epoch_writes(tiny_demo, tmp_path, reference, caplog):
    folder = killed_run(tiny_demo, tmp_path, "between", 1)
    # the first validation is always a new best: best.pth.tar is written first, then the kill
    assert sorted(p.name for p in folder.glob("*.pth.tar")) == ["best.pth.tar"]
    assert_best_not_stale(folder)
    caplog.set_level(logging.INFO)
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "k", "--resume", "auto", **OPTS)) == 0
    assert "continuing from" in caplog.text and "best.pth.tar (epoch 1)" in caplog.text
    assert "wrote the missing epoch_001.pth.tar from best.pth.tar" in caplog.text
    assert_best_not_stale(folder)
    for name in ("epoch_001.pth.tar", "epoch_002.pth.tar", "best.pth.tar"):
        a, b = load(reference / name), load(folder / name)
        assert_same_training_state(a, b)
        assert a["best_map"] == b["best_map"] and a["best_epoch"] == b["best_epoch"]


def test_kill_in_the_middle_of_a_write_leaves_only_a_temp_file(tiny_demo, tmp_path, reference,
                                                               caplog):
    # without validation (faster; and validating does not change the trajectory: same weights)
    folder = killed_run(tiny_demo, tmp_path, "midwrite", 2, **{"train.eval_freq": 0})
    temps = stale_temp_files(folder)
    assert len(temps) == 1 and temps[0].name.startswith(".")      # no truncated final file
    assert load(folder / "epoch_001.pth.tar")["epoch"] == 1
    assert not (folder / "epoch_002.pth.tar").exists()
    caplog.set_level(logging.INFO)
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "k", "--resume", "auto",
                                     **{**OPTS, "train.eval_freq": 0})) == 0
    assert "removed 1 stale temp file(s)" in caplog.text and stale_temp_files(folder) == []
    assert_same_training_state(load(reference / "epoch_002.pth.tar"), load(folder / "epoch_002.pth.tar"))
