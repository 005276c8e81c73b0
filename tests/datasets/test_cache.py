"""The shared, bounded feature cache (libs/datasets/cache.py) and reading at first use: the budget
picks the first videos that fit, allocation costs no memory, loader workers fill one tensor for
all, items never depend on the cache, errors found in a worker stay one line."""
import io
import logging
import multiprocessing.reduction
import os

import numpy as np
import pytest
import torch

from datagen import write_tiny_config, write_tiny_dataset
from libs.common.errors import UserError
from libs.config.loader import load_config
from libs.datasets import make_loader
from libs.datasets.cache import FeatureCache, ReadError, round_to
from libs.datasets.perception import PerceptionDataset

VIDEO_BYTES = 14 * 96 * 4          # tiny dataset: C = 8 + 6 channels, 96 cells, float32


def _dataset(tmp_path, data, training=False, **ds):
    os.makedirs(tmp_path, exist_ok=True)
    cfg = load_config(write_tiny_config(str(tmp_path / "cfg.yaml"), data,
                                        overrides={"dataset": ds} if ds else None))
    return PerceptionDataset.from_config(cfg, ["train"], is_training=training)


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_budget_keeps_the_first_videos_that_fit():
    lengths = [10, 20, 10, 5]                                   # 4 channels, float32: 160 B/cell col
    cache = FeatureCache(channels=4, lengths=lengths, dtype="float32", max_bytes=4 * 4 * 30 + 1)
    assert cache.count == 2 and cache.nbytes == 4 * 4 * 30
    assert "2 of 4 videos" in cache.describe() and "limited by dataset.cache_max_gb" in cache.describe()
    assert FeatureCache(channels=4, lengths=lengths, dtype="float32", max_bytes=None).count == 4
    assert FeatureCache(channels=4, lengths=lengths, dtype="float32", max_bytes=0).count == 0
    half = FeatureCache(channels=4, lengths=lengths, dtype="float16", max_bytes=4 * 2 * 30 + 1)
    assert half.count == 2 and half.nbytes == 4 * 2 * 30      # float16: half the bytes per video
    x = torch.randn(4, 20)
    assert cache.get(1) is None and 1 not in cache
    cache.put(1, x, rows=7)
    feats, rows = cache.get(1)
    assert rows == 7 and cache.filled() == 1 and 0 not in cache
    torch.testing.assert_close(feats, x, rtol=0, atol=0)
    feats += 1                                                 # a copy: the cache is unchanged
    torch.testing.assert_close(cache.get(1)[0], x, rtol=0, atol=0)
    cache.put(3, torch.zeros(4, 5), rows=1)                    # past the budget: not kept
    assert cache.get(3) is None


def test_allocating_costs_no_memory_until_written():
    before = _rss()
    cache = FeatureCache(channels=1024, lengths=[2 ** 15] * 8, dtype="float32", max_bytes=None)
    assert cache.nbytes == 2 ** 30 and _rss() - before < 64 * 2 ** 20   # 1 GiB allocated, untouched
    cache.put(0, torch.ones(1024, 2 ** 15), rows=1)
    assert _rss() - before > 100 * 2 ** 20                     # one video written: 128 MiB resident


def test_loader_workers_fill_one_shared_cache(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    ds = _dataset(tmp_path, data)
    assert ds.use_cache and ds.cache.count == len(ds) and ds.cache.filled() == 0   # nothing read yet
    loader = make_loader(ds, batch_size=2, num_workers=2, is_training=False, seed=0,
                         max_seq_len=96, max_div_factor=96)
    assert ds.cache.filled() == 0                              # nothing filled before the workers
    ids = [vid for batch in loader for vid in batch["video_ids"]]
    del loader
    assert ids == [v.video_id for v in ds.videos]
    assert ds.cache.filled() == len(ds)                        # written by the workers, seen here
    plain = _dataset(tmp_path / "off", data, cache=False)
    for i in range(len(ds)):
        torch.testing.assert_close(ds[i]["feats"], plain[i]["feats"], rtol=0, atol=0)


def test_cache_pickles_as_shared_memory_for_spawned_workers(tmp_path):
    ds = _dataset(tmp_path, write_tiny_dataset(str(tmp_path / "d")))
    buf = io.BytesIO()
    multiprocessing.reduction.ForkingPickler(buf).dump(ds)       # what a spawned worker receives
    copy = multiprocessing.reduction.ForkingPickler.loads(buf.getvalue())
    item = copy[2]                                             # the copy reads and fills video 2
    assert 2 in ds.cache                                       # ... into the original's memory
    torch.testing.assert_close(ds[2]["feats"], item["feats"], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_items_do_not_depend_on_the_cache_or_its_budget(tmp_path, dtype):
    data = write_tiny_dataset(str(tmp_path / "d"))
    full = _dataset(tmp_path / "a", data, training=True, cache_dtype=dtype)
    one = _dataset(tmp_path / "b", data, training=True, cache_dtype=dtype,
                   cache_max_gb=0.75 * VIDEO_BYTES / 1e9)        # 16-bit: room for one video
    off = _dataset(tmp_path / "c", data, training=True, cache_dtype=dtype, cache=False)
    exact = _dataset(tmp_path / "e", data, training=True, cache=False)
    assert one.cache.count == 1 and full.cache.count == len(full)
    for epoch in (0, 1):                                       # second epoch: from the cache
        for i in range(len(full)):
            ref = off[(epoch, i)]
            for ds in (full, one):
                item = ds[(epoch, i)]
                torch.testing.assert_close(item["feats"], ref["feats"], rtol=0, atol=0)
                torch.testing.assert_close(item["segments"], ref["segments"], rtol=0, atol=0)
            f32 = exact[(epoch, i)]["feats"]
            assert ref["feats"].dtype == torch.float32
            torch.testing.assert_close(ref["feats"], round_to(f32, dtype), rtol=0, atol=0)
            tol = 2.0 ** -8 if dtype == "float16" else 2.0 ** -5
            torch.testing.assert_close(ref["feats"], f32, rtol=tol, atol=1e-6)
    assert full.cache.filled() == len(full) and one.cache.filled() == 1


def test_partial_cache_is_logged_with_size_and_dtype(tmp_path, caplog):
    data = write_tiny_dataset(str(tmp_path / "d"))
    with caplog.at_level(logging.INFO, logger="libs.datasets.perception"):
        ds = _dataset(tmp_path, data, cache_max_gb=2.5 * VIDEO_BYTES / 1e9)
    assert ds.cache.count == 2
    assert ("feature cache: 2 of 4 videos, 0.0 MiB of float32 in shared memory" in caplog.text
            and "the other 2 are read from disk at every epoch" in caplog.text)
    off = _dataset(tmp_path / "off", data, cache=False)
    assert off.cache is None and not off.use_cache


def _poison(data, vid):
    fname = os.path.join(data["paths"]["video"], vid + ".npy")
    a = np.load(fname)
    a[1, 2] = np.nan
    np.save(fname, a)


def test_nonfinite_found_in_a_worker_is_the_same_one_line_error(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    vid = data["video_ids"]["train"][3]
    _poison(data, vid)
    ds = _dataset(tmp_path, data)
    loader = make_loader(ds, batch_size=2, num_workers=1, is_training=False, seed=0,
                         max_seq_len=96, max_div_factor=96)
    with pytest.raises(UserError) as err:
        list(loader)
    del loader
    msg = str(err.value)
    assert isinstance(err.value, ReadError) and "\n" not in msg and "Traceback" not in msg
    assert msg.startswith(f"non-finite values (modality 'video', video '{vid}'): 1 of ")
    assert msg.endswith("dataset.on_nonfinite: zero replaces NaN/inf by 0")
    assert 3 not in ds.cache                                   # a bad video is never cached
    assert str(ReadError("plain message")) == "plain message"


def test_values_past_float16_are_an_error_naming_the_video(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    vid = data["video_ids"]["train"][0]
    fname = os.path.join(data["paths"]["audio"], vid + ".npy")
    a = np.load(fname)
    a[0, 0] = 1e5
    np.save(fname, a)
    ds = _dataset(tmp_path, data, cache_dtype="float16")
    with pytest.raises(ReadError, match=f"features beyond the float16 range .*video '{vid}'"):
        ds[0]
    assert float(_dataset(tmp_path / "b", data, cache_dtype="bfloat16")[0]["feats"].max()) > 65504


@pytest.mark.parametrize("bad, needle", [
    ({"cache_max_gb": -1}, "config key 'dataset.cache_max_gb' out of range"),
    ({"cache_dtype": "int8"}, "invalid value for config key 'dataset.cache_dtype'"),
])
def test_cache_keys_are_checked(tmp_path, bad, needle):
    data = write_tiny_dataset(str(tmp_path / "d"))
    with pytest.raises(UserError, match=needle):
        _dataset(tmp_path, data, **bad)


def test_the_segment_reserves_no_memory_and_is_removed_with_the_cache():
    import gc
    cache = FeatureCache(channels=1024, lengths=[256] * 64, dtype="float32", max_bytes=None)
    path = os.path.join("/dev/shm", cache._segment.name.lstrip("/"))
    assert cache.nbytes == 64 * 256 * 1024 * 4
    assert os.stat(path).st_blocks == 0            # sized, not reserved (fallocate would fill it)
    cache.put(0, torch.ones(1024, 256), rows=256)
    assert 0 < os.stat(path).st_blocks * 512 <= 2 * 256 * 1024 * 4
    del cache
    gc.collect()
    assert not os.path.exists(path)
