"""A full disk during training (a real 3 MiB tmpfs as the output folder): one ``error:`` line
naming the checkpoint and "No space left on device", the earlier checkpoint intact, no temp file."""
from __future__ import annotations

import hashlib

import pytest

import train as train_cli
from libs.common.errors import run_cli
from libs.common.io import stale_temp_files
from train_helpers import load, train_argv
from tmpfs import small_tmpfs


@pytest.fixture
def small_disk(tmp_path):
    """A 3m tmpfs (skipped where it cannot be mounted)."""
    with small_tmpfs(tmp_path, "3m") as mnt:
        yield mnt


def test_full_disk_while_training(tiny_demo, small_disk, capsys):
    # each checkpoint of the tiny model is ~1.9 MB: epoch_001 fits, epoch_002 does not
    with pytest.raises(SystemExit) as exc:
        run_cli(train_cli.main, train_argv(tiny_demo, small_disk, "full"))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    folder = small_disk / "demo_tsl_train_full"
    assert "No space left on device" in lines[0] and str(folder / "epoch_002.pth.tar") in lines[0]
    assert "inline_container" not in lines[0]
    assert load(folder / "epoch_001.pth.tar")["epoch"] == 1
    assert stale_temp_files(folder) == [] and not (folder / "epoch_002.pth.tar").exists()
    digest = hashlib.sha256((folder / "epoch_001.pth.tar").read_bytes()).hexdigest()
    # resuming on the full disk fails the same way and leaves epoch_001 as it was
    with pytest.raises(SystemExit):
        run_cli(train_cli.main, train_argv(tiny_demo, small_disk, "full", "--resume", "auto"))
    assert hashlib.sha256((folder / "epoch_001.pth.tar").read_bytes()).hexdigest() == digest
    assert stale_temp_files(folder) == []
