"""tools/pack_features.py and tools/summarize_dataset.py (CLI and library use)."""
import copy
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from datagen import write_tiny_config, write_tiny_dataset
from libs.config.loader import load_config
from libs.common.errors import UserError
from libs.datasets.perception import PerceptionDataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import summarize_dataset  # noqa: E402
from pack_features import main as pack_main, pack_folder  # noqa: E402


def _run(tool, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_h5_items_equal_folder_items(tmp_path):
    mods = [{"name": "audio", "dim": 8, "rows_per_sec": 10.0, "ext": ".npy", "primary": True},
            {"name": "video", "dim": 6, "rows_per_sec": 3.0, "ext": ".pt"}]
    data = write_tiny_dataset(str(tmp_path / "d"), modalities=mods, splits={"train": 3, "valid": 1})
    h5_mods = copy.deepcopy(data["modalities"])
    for m in h5_mods:
        out = str(tmp_path / f"{m['name']}.h5")
        assert pack_folder(m["path"], out, m["ext"], progress=False) == 4
        m["path"], m["ext"] = out, ".h5"
    with h5py.File(h5_mods[1]["path"], "r") as f:
        assert sorted(f.keys()) == [f"video_{i:04d}" for i in range(4)]
        assert f["video_0000"].dtype == np.float32
    for training in (False, True):
        items = []
        for name, over in (("folder", {}), ("h5", {"dataset": {"modalities": h5_mods}})):
            cfg = load_config(write_tiny_config(str(tmp_path / f"{name}.yaml"), data, overrides=over))
            ds = PerceptionDataset.from_config(cfg, ["train"], training)
            ds.set_epoch(4)
            items.append([ds[i] for i in range(len(ds))])
        for a, b in zip(*items):
            assert a["video_id"] == b["video_id"]
            assert torch.equal(a["feats"], b["feats"]) and torch.equal(a["segments"], b["segments"])
            assert torch.equal(a["labels"], b["labels"]) and a["grid"] == b["grid"]


def test_pack_refuses_overwrite_and_bad_files(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 2})
    out = str(tmp_path / "a.h5")
    pack_folder(data["paths"]["audio"], out, progress=False)
    with pytest.raises(UserError, match="--overwrite"):
        pack_folder(data["paths"]["audio"], out, progress=False)
    np.save(os.path.join(data["paths"]["audio"], "video_0009.npy"), np.zeros((3, 5), np.float32))
    before = os.path.getmtime(out)
    with pytest.raises(UserError, match="video_0009.npy has 5 channels"):
        pack_folder(data["paths"]["audio"], out, overwrite=True, progress=False)
    assert os.path.getmtime(out) == before and sorted(os.listdir(tmp_path)) == ["a.h5", "d"]


def test_pack_cli(tmp_path, capsys):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 2})
    out = str(tmp_path / "v.h5")
    assert pack_main([data["paths"]["video"], out]) == 0
    assert "packed 2 videos" in capsys.readouterr().out
    res = _run("pack_features.py", str(tmp_path / "nope"), str(tmp_path / "x.h5"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: feature folder not found")


def test_summarize_cli(tmp_path, capsys):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 3, "valid": 1})
    cfg = write_tiny_config(str(tmp_path / "c.yaml"), data)
    assert summarize_dataset.main([cfg]) == 0
    out = capsys.readouterr().out
    assert "videos: 3" in out and "audio primary (.npy" in out and "dim 6" in out
    assert "class_0" in out and "~10.00 rows/s" in out
    os.remove(os.path.join(data["paths"]["video"], "video_0001.npy"))
    res = _run("summarize_dataset.py", cfg, "--split", "train")
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "video_0001" in lines[0]
    assert summarize_dataset.main([cfg, "--opt", "dataset.on_missing=zeros"]) == 0
    assert "1 zero-filled" in capsys.readouterr().out
