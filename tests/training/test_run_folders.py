"""Exclusive run folders: a lock held for the run's life, unique timestamp names, stale temp files
of killed writes removed at start and on resume."""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

import train as train_cli
from libs.common.errors import UserError, run_cli
from libs.common.io import atomic_path, stale_temp_files
from libs.training import run_dir
from libs.training.run_dir import claim_run_dir
from train_helpers import ROOT, load, train_argv


def test_a_second_run_into_a_held_folder_is_a_one_line_error(tiny_demo, tmp_path, capsys):
    folder = tmp_path / "demo_tsl_train_same"
    # the other run is another process holding the folder (as train.py does for its whole life)
    # (the lock protocol of libs/training/run_dir.py without importing torch: fast)
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time; "
         f"fd = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid %d' % os.getpid()); "
         "print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exc:
            run_cli(train_cli.main, train_argv(tiny_demo, tmp_path, "same"))
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err
        assert "run folder is in use by another train.py" in lines[0]
        assert str(folder) in lines[0] and f"pid {holder.pid}" in lines[0]
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]   # nothing of the loser
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the folder is free again
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "same")) == 0
    assert load(folder / "epoch_002.pth.tar")["epoch"] == 2


def test_lock_is_held_for_the_runs_life_and_released_after(tmp_path):
    with claim_run_dir(tmp_path / "r"):
        with pytest.raises(UserError, match="in use"):
            claim_run_dir(tmp_path / "r")
    claim_run_dir(tmp_path / "r").release()


def test_timestamp_folders_are_unique_within_one_second(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.setattr(run_dir, "timestamp", lambda: "20240101-120000")
    for _ in range(3):
        argv = train_argv(tiny_demo, tmp_path, "x", **{"opt.early_stop_epochs": 1})
        i = argv.index("--output")
        assert train_cli.main(argv[:i] + argv[i + 2:]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["demo_tsl_train_20240101-120000", "demo_tsl_train_20240101-120000-2",
                     "demo_tsl_train_20240101-120000-3"]
    for n in names:   # each run wrote only its own folder
        text = (tmp_path / n / "train.log").read_text()
        assert text.count(" INFO done: ") == 1 and text.count(f"done: {tmp_path / n}\n") == 1


def test_stale_temp_files_are_removed_at_start_and_on_resume(tiny_demo, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    folder = tmp_path / "demo_tsl_train_tmp"
    folder.mkdir()
    (folder / ".epoch_001.pth.tar.k2j_x9a0.tmp").write_bytes(b"half a checkpoint")
    (folder / "notes.tmp").write_text("not ours: kept")
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "tmp", **{"opt.early_stop_epochs": 1})) == 0
    assert "removed 1 stale temp file(s)" in caplog.text
    assert stale_temp_files(folder) == [] and (folder / "notes.tmp").exists()
    for name in (".epoch_002.pth.tar.abcdefgh.tmp", ".config.yaml.12345678.tmp"):
        (folder / name).write_bytes(b"x")
    caplog.clear()
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "tmp", "--resume", "auto")) == 0
    assert "removed 2 stale temp file(s)" in caplog.text and stale_temp_files(folder) == []
    with atomic_path(folder / "x.json") as tmp:   # the pattern matches what atomic_path writes
        assert stale_temp_files(folder) == [folder / tmp.split("/")[-1]]
        time.sleep(0)
