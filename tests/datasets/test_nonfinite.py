"""NaN/inf in feature files: found at the video's first read (dataset.on_nonfinite: error) or all
at once by ``check_values``, or zeroed and logged (zero); the summary tool reports them
(docs/numerics.md s.1.2)."""
import logging
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from datagen import write_tiny_config, write_tiny_dataset
from libs.common.errors import UserError
from libs.config.loader import load_config
from libs.datasets.perception import PerceptionDataset, resample_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PT_VIDEO = ({"name": "audio", "dim": 8, "rows_per_sec": 10.0, "ext": ".npy", "primary": True},
            {"name": "video", "dim": 6, "rows_per_sec": 3.0, "ext": ".pt"})
H5_VIDEO = ({"name": "audio", "dim": 8, "rows_per_sec": 10.0, "ext": ".npy", "primary": True},
            {"name": "video", "dim": 6, "rows_per_sec": 3.0, "ext": ".h5"})


def _poison(data, name, vid, rows, value=np.nan):
    """Put ``value`` into ``rows`` of one video's file of modality ``name``; returns the array."""
    path = data["paths"][name]
    if path.endswith(".h5"):
        with h5py.File(path, "r+") as f:
            a = f[vid][()]
            a[rows, 1] = value
            del f[vid]
            f.create_dataset(vid, data=a)
        return a
    ext = next(m["ext"] for m in data["modalities"] if m["name"] == name)
    fname = os.path.join(path, vid + ext)
    a = np.load(fname) if ext == ".npy" else torch.load(fname).numpy()
    a[rows, 1] = value
    if ext == ".npy":
        np.save(fname, a)
    else:
        torch.save(torch.from_numpy(a), fname)
    return a


def _dataset(tmp_path, data, **ds):
    cfg = load_config(write_tiny_config(str(tmp_path / "cfg.yaml"), data,
                                        overrides={"dataset": dict(force_upsampling=False, **ds)}))
    return PerceptionDataset.from_config(cfg, ["train"], is_training=False)


@pytest.mark.parametrize("mods", [None, PT_VIDEO, H5_VIDEO], ids=["npy", "pt", "h5"])
def test_nonfinite_values_are_an_error_naming_video_modality_and_rows(tmp_path, mods):
    data = write_tiny_dataset(str(tmp_path / "d"), **({"modalities": mods} if mods else {}))
    vid = data["video_ids"]["train"][2]
    _poison(data, "video", vid, [0, 2])
    _poison(data, "audio", data["video_ids"]["train"][0], [1], np.inf)
    ds = _dataset(tmp_path, data)       # values are checked at each video's first read
    assert ds[1]["video_id"] == data["video_ids"]["train"][1]
    with pytest.raises(UserError) as err:
        ds[2]
    msg = str(err.value)
    assert msg.startswith(f"non-finite values (modality 'video', video '{vid}'): 2 of ")
    assert "rows hold NaN or inf in " in msg and "dataset.on_nonfinite: zero replaces" in msg
    with pytest.raises(UserError) as err:  # the up-front pass (tools/summarize_dataset.py) lists all
        ds.check_values(show_progress=False)
    msg = str(err.value)
    assert "2 feature file problem(s)" in msg and "on_nonfinite: zero" in msg
    assert f"non-finite values (modality 'video', video '{vid}'): 2 of " in msg
    assert f"non-finite values (modality 'audio', video '{data['video_ids']['train'][0]}'): 1 of" in msg


def test_other_splits_are_not_read(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    _poison(data, "video", data["video_ids"]["valid"][0], [0])
    ds = _dataset(tmp_path, data)
    assert len(ds) == 4                                 # train only: the valid NaN is not read
    ds.check_values(show_progress=False)
    assert [ds[i]["video_id"] for i in range(4)] == data["video_ids"]["train"]


@pytest.mark.parametrize("cache", [True, False])
def test_zero_replaces_nonfinite_values_and_logs_the_count(tmp_path, caplog, cache):
    data = write_tiny_dataset(str(tmp_path / "d"))
    vid = data["video_ids"]["train"][1]
    poisoned = _poison(data, "video", vid, [0, 1], np.nan)
    ds = _dataset(tmp_path, data, on_nonfinite="zero", cache=cache)
    with caplog.at_level(logging.WARNING):
        item = ds[1]
        again = ds[1]
    assert caplog.text.count(f"non-finite values (modality 'video', video '{vid}'): 2 of {poisoned.shape[0]} rows "
                             "hold NaN or inf in ") == 1 and "replaced by 0" in caplog.text
    assert ds.nonfinite[1] == {vid: 2} and ds.nonfinite[0] == {}
    assert item["video_id"] == vid and torch.isfinite(item["feats"]).all()
    torch.testing.assert_close(again["feats"], item["feats"], rtol=0, atol=0)
    audio = np.load(os.path.join(data["paths"]["audio"], vid + ".npy"))
    expected = resample_rows(np.where(np.isfinite(poisoned), poisoned, 0.0), audio.shape[0])
    np.testing.assert_allclose(item["feats"][8:].numpy(), expected.T, atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ds.check_values(show_progress=False)
    assert "NaN/inf replaced by 0 in video: 2 rows of 1 video(s)" in caplog.text


def test_summary_tool_counts_nonfinite_rows(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    vid = data["video_ids"]["train"][3]
    _poison(data, "video", vid, [0, 1, 2], np.inf)
    cfg = write_tiny_config(str(tmp_path / "cfg.yaml"), data)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "summarize_dataset.py"), cfg],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (f"non-finite values: 3 rows in 1 video(s) (e.g. {vid}); dataset.on_nonfinite 'error' "
            "stops training and evaluation") in res.stdout
