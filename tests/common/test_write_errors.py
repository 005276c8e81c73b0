"""Write errors are user errors: a full disk (a real tmpfs), a path through a file, no permission;
one line naming the file and the cause, the previous file intact, no temp file left."""
from __future__ import annotations

import errno
import hashlib

import pytest
import torch

from libs.common import io as io_mod
from libs.common.checkpoints import load_checkpoint, save_checkpoint
from libs.common.errors import UserError
from libs.common.io import (atomic_write_text, check_output_file, check_output_folder, os_error_in,
                            stale_temp_files)
from tmpfs import small_tmpfs


@pytest.fixture
def small_disk(tmp_path):
    """A 512k tmpfs (skipped where it cannot be mounted)."""
    with small_tmpfs(tmp_path, "512k") as mnt:
        yield mnt


def test_full_disk_checkpoint_is_one_line_and_keeps_the_old_file(small_disk):
    path = small_disk / "epoch_001.pth.tar"
    save_checkpoint({"epoch": 1, "w": torch.zeros(10)}, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UserError) as exc:
        save_checkpoint({"epoch": 2, "w": torch.zeros(1_000_000)}, path)      # 4 MB > 512 KiB
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and "No space left on device" in msg
    assert "inline_container" not in msg
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert stale_temp_files(small_disk) == []
    with pytest.raises(UserError, match="No space left on device"):
        atomic_write_text(small_disk / "big.json", "x" * 1_000_000)
    assert sorted(p.name for p in small_disk.iterdir()) == ["epoch_001.pth.tar"]


def test_permission_and_not_a_directory(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    atomic_write_text(path, "old")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"afile/r\.json\): Not a directory"):
        atomic_write_text(tmp_path / "afile" / "r.json", "new")

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", dst)

    monkeypatch.setattr(io_mod.os, "replace", denied)     # root ignores file modes: simulate
    with pytest.raises(UserError, match=r"m\.json\): Permission denied"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and stale_temp_files(tmp_path) == []


def test_os_error_found_in_the_exception_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    except RuntimeError as err:
        assert os_error_in(err).errno == errno.ENOSPC
    assert os_error_in(RuntimeError("x")) is None


def test_output_paths_are_checked_before_work(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "deeper" / "r.json", "result file")
    with pytest.raises(UserError, match="it is a folder"):
        check_output_file(tmp_path, "result file")
    with pytest.raises(UserError, match="exists"):
        check_output_file(tmp_path / "afile", "result file", overwrite=False)
    check_output_file(tmp_path / "new" / "deeper" / "r.json", "result file")   # created later
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(io_mod.os, "access", lambda p, mode: False)
    with pytest.raises(UserError, match="is not writable"):
        check_output_folder(tmp_path / "raw", "--save-raw folder")
