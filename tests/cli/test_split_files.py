"""The challenge layout: one annotation file per split, listed in dataset.annotation_file; training
validates on the valid file and keeps best.pth.tar; eval.py takes the same config for valid/test."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval as eval_cli
import train as train_cli
from libs.common.errors import UserError
from libs.config.loader import load_config
from libs.datasets import PerceptionDataset
from tools.make_demo_data import generate_demo_data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "demo_tsl_train.yaml")


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    data = root / "data"
    generate_demo_data(data, seed=2, num_train=4, num_valid=2, num_test=2, min_duration=4.0,
                       max_duration=6.0)
    ann = json.loads((data / "annotations.json").read_text())
    files = []
    for split in ("train", "valid", "test"):
        part = {v: e for v, e in ann.items() if e["metadata"]["split"] == split}
        path = data / f"challenge_sound_localisation_{split}.json"
        path.write_text(json.dumps(part))
        files.append(str(path))
    opts = [f"dataset.annotation_file=[{', '.join(files)}]",
            f"dataset.modalities.0.path={data / 'features' / 'beats'}",
            f"dataset.modalities.1.path={data / 'features' / 'umt'}",
            f"output_folder={root / 'ckpt'}", "model.embd_dim=16", "model.n_head=2",
            "loader.batch_size=4", "loader.eval_batch_size=2", "loader.num_workers=0",
            "opt.epochs=1", "opt.warmup_epochs=1", "train.eval_freq=1",
            "test_cfg.nms.max_seg_num=30"]
    return {"root": root, "files": files, "opts": opts, "ann": ann}


def test_config_takes_a_list_and_datasets_read_every_file(split_files):
    cfg = load_config(CONFIG, split_files["opts"])
    assert cfg.dataset.annotation_file == tuple(split_files["files"])
    for split in ("train", "valid", "test"):
        ds = PerceptionDataset.from_config(cfg, [split], is_training=False)
        expected = [v for v, e in split_files["ann"].items() if e["metadata"]["split"] == split]
        assert [v.video_id for v in ds.videos] == expected
    with pytest.raises(UserError, match="wrong type for config key 'dataset.annotation_file' "
                                        r"\(.*\): expected a string or a list of them, got 3"):
        load_config(CONFIG, split_files["opts"] + ["dataset.annotation_file=3"])


def test_train_validates_keeps_best_and_eval_uses_the_same_config(split_files):
    opts = split_files["opts"]
    assert train_cli.main([CONFIG, "--output", "s", "--device", "cpu", "--no-progress",
                           "--threads", "1", "--opt", *opts]) == 0
    run = split_files["root"] / "ckpt" / "demo_tsl_train_s"
    assert (run / "best.pth.tar").is_file()
    assert "validation" in (run / "train.log").read_text()
    valid = split_files["root"] / "valid.json"
    assert eval_cli.main([CONFIG, str(run / "best.pth.tar"), "--split", "valid", "--device", "cpu",
                          "--no-progress", "--out", str(valid), "--opt", *opts]) == 0
    metrics = json.loads(valid.with_name("valid_metrics.json").read_text())
    assert 0.0 <= metrics["average_map"] <= 1.0
    test = split_files["root"] / "test.json"
    assert eval_cli.main([CONFIG, str(run / "best.pth.tar"), "--split", "test", "--saveonly",
                          "--device", "cpu", "--no-progress", "--out", str(test),
                          "--opt", *opts]) == 0
    test_ids = [v for v, e in split_files["ann"].items() if e["metadata"]["split"] == "test"]
    assert list(json.loads(test.read_text())) == test_ids
