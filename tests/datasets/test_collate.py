"""Batching (padding, masks) and loaders (epoch shuffling, workers, ranks)."""
import numpy as np
import pytest
import torch

from datagen import write_tiny_config, write_tiny_dataset
from libs.config.loader import load_config
from libs.common.errors import UserError
from libs.datasets.collate import collate_batch, padded_length
from libs.datasets.loader import EpochSampler, make_loader, set_loader_epoch
from libs.datasets.perception import PerceptionDataset
from libs.datasets.timegrid import TimeGrid


def _item(vid, length, channels=3, n_events=1):
    grid = TimeGrid(1.0, 1.0, 1.0, float(length))
    return {"video_id": vid, "feats": torch.full((channels, length), 1.0 + length),
            "segments": torch.zeros(n_events, 2), "labels": torch.zeros(n_events, dtype=torch.int64),
            "duration": float(length), "grid": grid}


def test_training_pads_to_max_seq_len():
    batch = collate_batch([_item("a", 5), _item("b", 8, n_events=0)], max_seq_len=8, max_div_factor=4,
                          is_training=True)
    assert batch["feats"].shape == (2, 3, 8) and batch["masks"].shape == (2, 1, 8)
    assert batch["masks"].dtype == torch.bool
    assert batch["masks"][0, 0].tolist() == [True] * 5 + [False] * 3 and bool(batch["masks"][1].all())
    assert torch.all(batch["feats"][0, :, :5] == 6.0) and torch.all(batch["feats"][0, :, 5:] == 0)
    assert batch["video_ids"] == ["a", "b"] and batch["durations"] == [5.0, 8.0]
    assert batch["segments"][1].shape == (0, 2) and len(batch["labels"]) == 2 and len(batch["grids"]) == 2
    with pytest.raises(UserError, match="video 'c'"):
        collate_batch([_item("c", 9)], 8, 4, True)


def test_inference_padding():
    assert padded_length(5, 8, 4) == 8 and padded_length(8, 8, 4) == 8
    assert padded_length(9, 8, 4) == 12 and padded_length(13, 8, 4) == 16
    batch = collate_batch([_item("a", 5), _item("b", 9)], max_seq_len=8, max_div_factor=4, is_training=False)
    assert batch["feats"].shape == (2, 3, 12)
    assert batch["masks"].sum(-1).ravel().tolist() == [5, 9]
    assert collate_batch([_item("a", 5)], 8, 4, False)["feats"].shape == (1, 3, 8)


def test_epoch_sampler_permutations_and_ranks():
    data = list(range(10))
    s = EpochSampler(data, seed=7)
    e0 = [i for _, i in s]
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == data and sorted(i for _, i in e1) == data and all(e == 1 for e, _ in e1)
    assert e0 != [i for _, i in e1]
    gen = torch.Generator()
    gen.manual_seed(8)
    assert [i for _, i in e1] == torch.randperm(10, generator=gen).tolist()
    parts = [EpochSampler(data, seed=7, rank=r, world_size=3) for r in range(3)]
    got = [[i for _, i in p] for p in parts]
    assert all(len(g) == 4 for g in got) and set(sum(got, [])) == set(data)


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    data = write_tiny_dataset(str(root / "d"), splits={"train": 5, "valid": 3})
    return load_config(write_tiny_config(str(root / "c.yaml"), data))


def _batches(loader):
    return [(b["video_ids"], b["feats"].clone(), b["masks"].clone()) for b in loader]


def test_training_loader_is_worker_independent(tiny_cfg):
    ds = PerceptionDataset.from_config(tiny_cfg, ["train"], True)
    kw = dict(batch_size=2, is_training=True, seed=3, max_seq_len=96, max_div_factor=96)
    runs = []
    for workers in (0, 2):
        loader = make_loader(ds, num_workers=workers, **kw)
        per_epoch = []
        for epoch in (0, 1):
            set_loader_epoch(loader, epoch)
            per_epoch.append(_batches(loader))
        runs.append(per_epoch)
    for epoch in (0, 1):
        assert len(runs[0][epoch]) == 2  # 5 videos, batch 2, drop_last
        for (ids0, f0, m0), (ids1, f1, m1) in zip(runs[0][epoch], runs[1][epoch]):
            assert ids0 == ids1
            torch.testing.assert_close(f0, f1)
            assert torch.equal(m0, m1)
    assert [b[0] for b in runs[0][0]] != [b[0] for b in runs[0][1]] or not torch.equal(
        runs[0][0][0][1], runs[0][1][0][1])
    assert ds.epoch == 1


def test_inference_loader_sequential_no_drop(tiny_cfg):
    ds = PerceptionDataset.from_config(tiny_cfg, ["valid"], False)
    loader = make_loader(ds, batch_size=2, num_workers=0, is_training=False, seed=0, max_seq_len=96,
                         max_div_factor=96)
    ids = [vid for b in loader for vid in b["video_ids"]]
    assert ids == [v.video_id for v in ds.videos] and len(ids) == 3
    first = next(iter(loader))
    assert first["feats"].shape == (2, 14, 96) and bool(first["masks"].all())
    np.testing.assert_allclose(first["durations"], [v.duration for v in ds.videos[:2]])


# the loader workers' shared feature cache: tests/datasets/test_cache.py


def test_inference_batches_group_equal_padded_lengths_in_order():
    from libs.datasets.loader import length_grouped_batches

    class Lengths:
        def __init__(self, lengths):
            self.lengths = lengths

        def __len__(self):
            return len(self.lengths)

        def grid_length(self, i):
            return self.lengths[i]

    # max_seq_len 96, max_div_factor 96: <= 96 -> 96, 97..192 -> 192, 193..288 -> 288
    ds = Lengths([50, 96, 150, 100, 20, 30, 40, 300])
    assert length_grouped_batches(ds, 2, 96, 96) == [[0, 1], [2, 3], [4, 5], [6], [7]]
    assert length_grouped_batches(ds, 8, 96, 96) == [[0, 1], [2, 3], [4, 5, 6], [7]]
