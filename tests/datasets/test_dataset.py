"""PerceptionDataset: assembly, grid, crops, checks of every file (docs/numerics.md s.1.3-3.2)."""
import copy
import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datagen import write_tiny_config, write_tiny_dataset
from libs.config.loader import load_config
from libs.common.errors import UserError
from libs.datasets.crop import truncate_feats
from libs.datasets.perception import PerceptionDataset, resample_rows, stack_rows


def _build(tmp_path, data, overrides=None, splits=("train",), training=False, task="sound_localisation"):
    cfg = load_config(write_tiny_config(str(tmp_path / "cfg.yaml"), data, task, overrides))
    return cfg, PerceptionDataset.from_config(cfg, list(splits), training)


def _load(data, name, vid):
    return np.load(os.path.join(data["paths"][name], vid + ".npy"))


def test_items_are_their_own_videos_files(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    cfg, ds = _build(tmp_path, data, {"dataset": {"force_upsampling": False}})
    assert cfg.derived.input_dims == (8, 6) and ds[0]["feats"].shape[0] == 14
    assert ds.num_classes == 3 and ds.task == "sound_localisation"
    assert len(ds) == 4
    for idx in [3, 1, 0, 2, 3]:  # out of order, repeated: the cache never mixes videos
        item = ds[idx]
        vid = ds.videos[idx].video_id
        assert item["video_id"] == vid
        audio, video = _load(data, "audio", vid), _load(data, "video", vid)
        t = audio.shape[0]
        assert item["feats"].shape == (14, t) and item["feats"].dtype == torch.float32
        np.testing.assert_array_equal(item["feats"][:8].numpy(), audio.T)
        np.testing.assert_allclose(item["feats"][8:].numpy(), resample_rows(video, t).T, atol=1e-6)
        assert item["duration"] == pytest.approx(ds.videos[idx].duration)


def test_upsampled_features_and_grid_segments(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    _, ds = _build(tmp_path, data, splits=("valid",))
    item = ds[1]
    vid, rec = item["video_id"], ds.videos[1]
    audio, video = _load(data, "audio", vid), _load(data, "video", vid)
    both = np.concatenate([audio, resample_rows(video, audio.shape[0])], axis=1).T   # (C, T)
    expected = F.interpolate(torch.from_numpy(both)[None], size=96, mode="linear", align_corners=False)[0]
    assert item["feats"].shape == (14, 96)
    torch.testing.assert_close(item["feats"], expected)
    # duration grid: cell = seconds / duration * 96 - 0.5
    np.testing.assert_allclose(item["segments"].numpy(), rec.segments / rec.duration * 96 - 0.5, rtol=1e-6)
    assert item["segments"].dtype == torch.float32 and item["labels"].dtype == torch.int64
    assert item["labels"].tolist() == rec.labels.tolist()
    np.testing.assert_allclose(item["grid"].to_seconds(item["segments"].double()).numpy(), rec.segments,
                               atol=1e-5)


def test_stride_grid_segments(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"))
    _, ds = _build(tmp_path, data, {"dataset": {"time_grid": "stride", "fps": 160.0}})
    item, rec = ds[0], ds.videos[0]
    t = _load(data, "audio", rec.video_id).shape[0]
    stride = ((t - 1) * 16 + 16) / 96
    np.testing.assert_allclose(item["segments"].numpy(), rec.segments * 160.0 / stride - 0.5, rtol=1e-6)


def test_resample_endpoint_vs_centre_values():
    x = np.array([[0.0], [10.0]], dtype=np.float32)
    np.testing.assert_allclose(resample_rows(x, 4, "endpoint")[:, 0], [0, 10 / 3, 20 / 3, 10], rtol=1e-6)
    np.testing.assert_allclose(resample_rows(x, 4, "centre")[:, 0], [0, 2.5, 7.5, 10], rtol=1e-6)
    one = np.array([[1.0, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(resample_rows(one, 3, "endpoint"), np.repeat(one, 3, axis=0))
    y = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.testing.assert_array_equal(resample_rows(y, 6, "endpoint"), y)  # same length: identity


def test_stack_rows_interleaving():
    x = np.arange(12).reshape(6, 2)   # rows [0 1] [2 3] ... [10 11]
    np.testing.assert_array_equal(stack_rows(x, 3, 2), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])


def test_rows_per_step_in_dataset(tmp_path):
    mods = [{"name": "audio", "dim": 8, "rows_per_sec": 10.0, "ext": ".npy", "primary": True},
            {"name": "beats", "dim": 6, "rows_per_sec": 20.0, "ext": ".npy", "rows_per_step": 2}]
    data = write_tiny_dataset(str(tmp_path / "d"), modalities=mods, splits={"train": 2})
    vid = "video_0001"
    t = _load(data, "audio", vid).shape[0]
    hand = np.arange(2 * t * 6, dtype=np.float32).reshape(2 * t, 6)     # exactly 2T rows: no resampling
    np.save(os.path.join(data["paths"]["beats"], vid + ".npy"), hand)
    cfg, ds = _build(tmp_path, data, {"dataset": {"force_upsampling": False}})
    assert cfg.derived.input_dims == (8, 12)
    feats = ds[1]["feats"].numpy()                                     # (20, T)
    assert feats.shape == (20, t)
    for row in (0, 1, t - 1):
        np.testing.assert_array_equal(feats[8:, row], np.concatenate([hand[2 * row], hand[2 * row + 1]]))


class _FixedStarts:
    """A stand-in rng whose every window start is ``st``."""

    def __init__(self, st):
        self.st = st

    def integers(self, lo, hi, size=None):
        assert lo <= self.st < hi
        return np.full(size, self.st)


@pytest.mark.parametrize("rng", [_FixedStarts(st) for st in range(5)]
                         + [np.random.default_rng(s) for s in range(4)])
def test_crop_hand_computed(rng):
    feats = torch.arange(10, dtype=torch.float32)[None]                  # (1, 10): value = column
    segs = np.array([[1.0, 3.0], [5.0, 9.0], [-1.0, 0.2]])
    labels = np.array([0, 1, 2])
    out_f, out_s, out_l = truncate_feats(feats, segs, labels, max_seq_len=6, trunc_thresh=0.5,
                                         crop_ratio=[0.9, 1.0], offset=0.5, rng=rng)
    st = int(out_f[0, 0])
    assert out_f.shape == (1, 6) and out_f[0].tolist() == list(range(st, st + 6))
    # window [st - 0.5, st + 6.5]; keep if clipped/original length >= 0.5, then shift by -st
    expected = {0: ([[1, 3], [-0.5, 0.2]], [0, 2]), 1: ([[0, 2], [4, 6.5]], [0, 1]),
                2: ([[-0.5, 1], [3, 6.5]], [0, 1]), 3: ([[2, 6]], [1]), 4: ([[1, 5]], [1])}
    np.testing.assert_allclose(out_s, expected[st][0])
    assert out_l.tolist() == expected[st][1]


def test_crop_no_window_keeps_an_event_uses_last():
    feats = torch.arange(10, dtype=torch.float32)[None]
    out_f, out_s, out_l = truncate_feats(feats, np.array([[0.0, 10.0]]), np.array([1]), 6, 0.9, None, 0.5,
                                         np.random.default_rng(3))
    last = int(np.random.default_rng(3).integers(0, 5, size=200)[-1])
    assert int(out_f[0, 0]) == last and out_s.shape == (0, 2) and out_l.shape == (0,)


def test_crop_ratio_length_and_unchanged():
    feats = torch.zeros(2, 20)
    segs, labels = np.array([[2.0, 8.0]]), np.array([0])
    out_f, _, _ = truncate_feats(feats, segs, labels, 96, 0.5, [0.5, 0.5], 0.5, np.random.default_rng(0))
    assert out_f.shape == (2, 10)
    out_f, out_s, _ = truncate_feats(feats, segs, labels, 96, 0.5, [1.0, 1.0], 0.5, np.random.default_rng(0))
    assert out_f is feats and out_s is segs


def test_training_crops_depend_on_seed_epoch_index(tmp_path, caplog):
    data = write_tiny_dataset(str(tmp_path / "d"))
    with caplog.at_level(logging.INFO):
        _, ds = _build(tmp_path, data, splits=("train", "test"), training=True)
    assert len(ds) == 4 and "skipped 1 test-split" in caplog.text
    a, b = ds[(2, 1)], ds[(2, 1)]
    torch.testing.assert_close(a["feats"], b["feats"])
    torch.testing.assert_close(a["segments"], b["segments"])
    ds.set_epoch(2)
    torch.testing.assert_close(ds[1]["feats"], a["feats"])
    lengths = {ds[(e, 1)]["feats"].shape[1] for e in range(12)}
    assert len(lengths) > 1 and max(lengths) <= 96 and min(lengths) >= round(0.9 * 96)


def test_25_missing_files_listed_at_once(tmp_path):
    ids = [f"video_{i:04d}" for i in range(25)]
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 25}, missing={"video": ids},
                              num_frames_range=(30, 40))
    with pytest.raises(UserError) as err:
        _build(tmp_path, data)
    msg = str(err.value)
    assert msg.count("missing feature file") == 20 and msg.endswith("(and 5 more)")
    assert "video 'video_0000'" in msg and "video_0000.npy" in msg and "'video'" in msg


def test_wrong_dim_and_unreadable_are_errors(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 2})
    with open(os.path.join(data["paths"]["video"], "video_0001.npy"), "wb") as f:
        f.write(b"garbage")
    mods = copy.deepcopy(data["modalities"])
    mods[0]["dim"] = 7
    with pytest.raises(UserError) as err:
        _build(tmp_path, data, {"dataset": {"modalities": mods}})
    msg = str(err.value)
    assert "modality 'audio', video 'video_0000'" in msg and ", 8), expected (T >= 1, 7)" in msg
    assert "unreadable feature file (modality 'video', video 'video_0001')" in msg


def test_on_missing_zeros(tmp_path, caplog):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 3},
                              missing={"video": ["video_0000", "video_0002"]})
    with caplog.at_level(logging.WARNING):
        _, ds = _build(tmp_path, data, {"dataset": {"on_missing": "zeros", "force_upsampling": False}})
    assert "2 missing/unreadable feature file(s) filled with zeros" in caplog.text
    assert torch.count_nonzero(ds[0]["feats"][8:]) == 0 and torch.count_nonzero(ds[2]["feats"][8:]) == 0
    assert torch.count_nonzero(ds[1]["feats"][8:]) > 0
    np.testing.assert_array_equal(ds[0]["feats"][:8].numpy(), _load(data, "audio", "video_0000").T)
    os.remove(os.path.join(data["paths"]["audio"], "video_0001.npy"))
    with pytest.raises(UserError, match="modality 'audio', video 'video_0001'"):
        _build(tmp_path, data, {"dataset": {"on_missing": "zeros"}})
