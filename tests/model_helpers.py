"""Helpers shared by the modeling tests."""
from __future__ import annotations

import torch

from libs.config.loader import resolve_config


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its init (LN weights/biases included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def padding_mask(lengths, t: int) -> torch.Tensor:
    """``(B, 1, T)`` bool: True in the first ``lengths[b]`` cells of each video."""
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]


TWO = ["action_localisation", "sound_localisation"]
MODS = [{"name": "a", "path": "a", "dim": 6, "primary": True}, {"name": "v", "path": "v", "dim": 4}]


def config(task, num_classes, regression="shared", train_cfg=None, **model):
    """A tiny resolved config (two modalities of 6 + 4 channels, 64 cells, 3 levels)."""
    return resolve_config({
        "task": task,
        "dataset": {"annotation_file": "x.json", "num_classes": num_classes, "max_seq_len": 64,
                    "modalities": MODS},
        "model": {"embd_dim": 8, "n_head": 2, "head_dim": 8, "backbone_arch": [1, 1, 2],
                  "n_mha_win_size": [3, 3, -1], "regression_range": [[0, 4], [4, 8], [8, 1000]],
                  "droppath": 0.0, "task_heads": {"regression": regression}, **model},
        "train_cfg": train_cfg or {},
    }, "test")


def two_task(regression="shared", train_cfg=None, **model):
    """The tiny config with the two tasks (3 action classes, 2 sound classes)."""
    return config(TWO, {"action_localisation": 3, "sound_localisation": 2}, regression, train_cfg,
                  **model)


def batch_of(segments, labels, annotated=None):
    """A collated batch of 2 videos x 64 cells (the second padded from cell 50)."""
    torch.manual_seed(0)
    feats = torch.randn(len(segments), 10, 64)
    masks = torch.ones(len(segments), 1, 64, dtype=torch.bool)
    masks[1, :, 50:] = False
    return {"feats": feats, "masks": masks,
            "segments": [torch.tensor(s, dtype=torch.float32).reshape(-1, 2) for s in segments],
            "labels": [torch.tensor(lab, dtype=torch.long) for lab in labels],
            "annotated": annotated}
