"""Golden-vector parity of the network forward pass (libs/modeling/detector.py and parts).

The tiny reference models are rebuilt through the config path (``resolve_config`` +
``Detector.from_config``), their original checkpoints loaded strictly after stripping
``module.``, and every intermediate compared with the reference at 1e-4 absolute.
"""
from __future__ import annotations

import functools

import pytest
import torch

from libs.config.loader import resolve_config
from libs.modeling import Detector

from golden import load_golden as _golden
TOL = 1e-4
KEYS = ("backbone_feats", "fpn_feats", "fpn_masks", "points", "cls_logits", "offsets")

# YAML-level settings of the golden models (README beside the files)
_COMMON_MODEL = {"embd_dim": 32, "n_head": 4, "n_mha_win_size": [7, 7, 7, 7, 7, -1],
                 "max_buffer_len_factor": 1.0, "droppath": 0.1, "use_abs_pe": True, "neck": "identity"}
RAW = {
    "tiny_actionformer.pt": {
        "dataset": {"annotation_file": "a.json", "num_classes": 5, "max_seq_len": 192,
                    "modalities": [{"name": "f", "path": "f", "dim": 40, "primary": True}]},
        "model": {**_COMMON_MODEL, "backbone": "single_stream"},
    },
    # two video families and one audio family whose two stacked rows are separate groups
    "tiny_fusion.pt": {
        "dataset": {"annotation_file": "a.json", "num_classes": 5, "max_seq_len": 192,
                    "modalities": [{"name": "v1", "path": "v1", "dim": 24, "primary": True},
                                   {"name": "v2", "path": "v2", "dim": 24},
                                   {"name": "au", "path": "au", "dim": 16, "rows_per_step": 2}]},
        "model": {**_COMMON_MODEL, "backbone": "fusion"},
    },
}




@functools.lru_cache(maxsize=None)
def _model(name: str) -> Detector:
    model = Detector.from_config(resolve_config(RAW[name], "test"))
    state = {k[len("module."):]: v for k, v in _golden(name)["state_dict_original_layout"].items()}
    model.load_state_dict(state, strict=True)
    return model


def _max_diffs(out: dict, ref: dict) -> dict:
    diffs = {}
    for key in KEYS:
        assert len(out[key]) == len(ref[key]), key
        worst = 0.0
        for a, b in zip(out[key], ref[key]):
            assert a.shape == b.shape, (key, a.shape, b.shape)
            if a.dtype == torch.bool or b.dtype == torch.bool:
                assert torch.equal(a.bool(), b.bool()), key
            else:
                worst = max(worst, (a.float() - b.float()).abs().max().item())
        diffs[key] = worst
    return diffs


@pytest.mark.parametrize("name", sorted(RAW))
def test_state_dict_layout(name: str) -> None:
    golden = _golden(name)["state_dict_original_layout"]
    ours = _model(name).state_dict()
    assert list(ours) == [k[len("module."):] for k in golden]       # same keys, same order
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in golden.values())


@pytest.mark.parametrize("name", sorted(RAW))
def test_train_pass(name: str) -> None:
    ref = _golden(name)["train"]
    model = _model(name)
    model.train()
    model.set_stochastic_depth(False)
    with torch.no_grad():
        out = model(ref["input"], ref["mask"])
    diffs = _max_diffs(out, ref)
    assert max(diffs.values()) < TOL, diffs


def _assert_eval_matches(model: Detector, name: str) -> None:
    model.eval()
    for i, ref in enumerate(_golden(name)["eval"]):
        with torch.no_grad():
            out = model(ref["input"], ref["mask"])
        diffs = _max_diffs(out, ref)
        assert max(diffs.values()) < TOL, (i, diffs)


@pytest.mark.parametrize("name", sorted(RAW))
def test_eval_pass(name: str) -> None:
    _assert_eval_matches(_model(name), name)


def test_stochastic_depth_switch() -> None:
    """With stochastic depth on, a training pass differs from the golden deterministic one."""
    ref = _golden("tiny_actionformer.pt")["train"]
    model = _model("tiny_actionformer.pt")
    model.train()
    try:
        model.set_stochastic_depth(True)
        torch.manual_seed(3)
        with torch.no_grad():
            out = model(ref["input"], ref["mask"])
        diff = max((a - b).abs().max().item() for a, b in zip(out["cls_logits"], ref["cls_logits"]))
        assert diff > TOL
    finally:
        model.set_stochastic_depth(False)


@pytest.mark.parametrize("name", sorted(RAW))
def test_unified_model_with_one_task_reproduces_golden(name: str) -> None:
    """``task`` as a list of one task (the unified model's code path): the original state-dict
    layout loads strictly and every eval output equals the golden vectors."""
    raw = dict(RAW[name], task=["sound_localisation"],
               model={**RAW[name]["model"], "task_heads": {"regression": "per_task"}})
    model = Detector.from_config(resolve_config(raw, "test"))
    state = {k[len("module."):]: v for k, v in _golden(name)["state_dict_original_layout"].items()}
    model.load_state_dict(state, strict=True)
    _assert_eval_matches(model, name)
