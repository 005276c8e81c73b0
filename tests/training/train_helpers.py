"""Helpers of the training tests: ``train.py`` argument lists for the tiny demo, checkpoint
comparison. The data comes from the ``tiny_demo`` fixture (tests/training/conftest.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "demo_tsl_train.yaml"


def opts_for(demo: Dict[str, Path], out_root: Path, **extra: Any) -> List[str]:
    """``--opt`` values: the tiny model on the tiny demo data, output under ``out_root``."""
    d = demo["data"]
    opts = {
        "dataset.annotation_file": d / "annotations.json",
        "dataset.modalities.0.path": d / "features" / "beats",
        "dataset.modalities.1.path": d / "features" / "umt",
        "output_folder": out_root,
        "model.embd_dim": 16, "model.n_head": 2, "loader.batch_size": 2, "loader.eval_batch_size": 2,
        "loader.num_workers": 0, "opt.epochs": 1, "opt.warmup_epochs": 1, "train.ckpt_freq": 1,
        "train.eval_freq": 0, "test_cfg.nms.max_seg_num": 50,
    }
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def train_argv(demo, out_root, output, *more, **opts) -> List[str]:
    return [str(CONFIG), "--output", output, "--device", "cpu", "--no-progress", "--threads", "1",
            *more, "--opt", *opts_for(demo, out_root, **opts)]


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} of {len(a)} tensors differ, e.g. {bad[:3]}"


def assert_same_training_state(a: dict, b: dict) -> None:
    """Weights, EMA weights, optimizer moments and normaliser of two checkpoints are identical."""
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["state_dict_ema"], b["state_dict_ema"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)
    assert a["loss_normalizer"] == b["loss_normalizer"]
