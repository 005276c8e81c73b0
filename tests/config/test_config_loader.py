"""Tests of libs/config/loader.py: merge, strict keys, types, cross-field checks."""
from __future__ import annotations

import copy
import dataclasses

import pytest

from libs.config.checks import level_div_factors
from libs.config.loader import resolve_config
from libs.config.schema import Config
from libs.config.spec import SCHEMA
from config_helpers import (A, MINIMAL, MODALITY, REPO, SRC, VIDEO, cfg_with, dims, error, loaded,  # noqa: F401
                            mods, resolved, write)

# ----------------------------------------------------------------------------- merge

def test_merge_fills_every_default_and_derived():
    cfg = resolved(MINIMAL, SRC)
    for sec, spec in SCHEMA.items():
        if isinstance(spec, dict):
            assert list(cfg[sec]) == list(spec)
    assert cfg["opt"]["learning_rate"] == 1e-3 and cfg["model"]["backbone_arch"] == [2, 2, 5]
    assert cfg["dataset"]["modalities"] == [{"name": "audio", "path": "feats/a", "ext": ".npy",
                                             "dim": 8, "primary": True, "rows_per_step": 1,
                                             "resample": "endpoint"}]
    assert dims(cfg) == {"input_dims": [8], "input_dim": 8}
    assert cfg["dataset"]["annotation_file"] == "ann.json"   # paths kept as written


def test_nested_override_and_no_mutation():
    raw = cfg_with(opt={"learning_rate": 5}, model={"n_head": 4})
    before = copy.deepcopy(raw)
    cfg = resolved(raw, SRC)
    assert cfg["opt"]["learning_rate"] == 5.0 and isinstance(cfg["opt"]["learning_rate"], float)
    assert cfg["opt"]["epochs"] == 50 and cfg["model"]["n_head"] == 4
    assert raw == before
    cfg["model"]["backbone_arch"].append(9)          # a fresh copy: the schema is untouched
    assert SCHEMA["model"]["backbone_arch"].default == (2, 2, 5)
    frozen = resolve_config(raw, SRC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen.opt.learning_rate = 1.0                # read-only
    assert frozen.model.backbone_arch == (2, 2, 5) and isinstance(frozen, Config)


def test_two_modalities_h5_ext_and_derived():
    raw = cfg_with(dataset={"modalities": [{"name": "audio", "path": "a", "dim": 8,
                                            "rows_per_step": 2},
                                           dict(VIDEO, primary=True)]})
    cfg = resolved(raw, SRC)
    assert [m["ext"] for m in cfg["dataset"]["modalities"]] == [".npy", ".h5"]
    assert dims(cfg) == {"input_dims": [16, 16], "input_dim": 32}


# ----------------------------------------------------------------------------- unknown keys

@pytest.mark.parametrize("raw, msg", [
    (cfg_with(opt={"learning_rat": 1}),
     "unknown config key 'opt.learning_rat' (configs/x.yaml): did you mean 'opt.learning_rate'?"),
    (cfg_with(datset={}),
     "unknown config key 'datset' (configs/x.yaml): did you mean 'dataset'?"),
    (cfg_with(model={"batch_size": 2}),
     "unknown config key 'model.batch_size' (configs/x.yaml): did you mean 'loader.batch_size'?"),
    (cfg_with(loader={"zzz": 1}),
     "unknown config key 'loader.zzz' (configs/x.yaml): valid keys in 'loader' are batch_size, "
     "eval_batch_size, num_workers"),
    (cfg_with(dataset={"modalities": [{"name": "a", "path": "a", "dim": 8},
                                      {"name": "b", "pth": "b", "dim": 8}]}),
     "unknown config key 'dataset.modalities[1].pth' (configs/x.yaml): did you mean "
     "'dataset.modalities[1].path'?"),
    (cfg_with(derived={"input_dimz": 8}),
     "unknown config key 'derived.input_dimz' (configs/x.yaml): did you mean 'derived.input_dim'?"),
])
def test_unknown_key_names_nearest(raw, msg):
    assert error(raw) == msg


def test_several_problems_reported_together():
    msg = error(cfg_with(opt={"learning_rat": 1}, loader={"batch_size": "abc"}))
    assert msg.startswith("2 config problems (configs/x.yaml): ")
    assert "'opt.learning_rat'" in msg and "'loader.batch_size'" in msg


# ----------------------------------------------------------------------------- types and ranges

@pytest.mark.parametrize("raw, msg", [
    (cfg_with(loader={"batch_size": "abc"}),
     "wrong type for config key 'loader.batch_size' (configs/x.yaml): expected an integer, "
     "got 'abc'"),
    (cfg_with(loader={"batch_size": 2.5}),
     "wrong type for config key 'loader.batch_size' (configs/x.yaml): expected an integer, "
     "got 2.5"),
    (cfg_with(loader={"batch_size": True}),
     "wrong type for config key 'loader.batch_size' (configs/x.yaml): expected an integer, "
     "got true"),
    (cfg_with(dataset={"cache": 1}),
     "wrong type for config key 'dataset.cache' (configs/x.yaml): expected true or false, got 1"),
    (cfg_with(output_folder=5),
     "wrong type for config key 'output_folder' (configs/x.yaml): expected a string, got 5"),
    (cfg_with(opt={"learning_rate": None}),
     "wrong type for config key 'opt.learning_rate' (configs/x.yaml): expected a number, got null"),
    (cfg_with(opt={"learning_rate": float("nan")}),
     "wrong type for config key 'opt.learning_rate' (configs/x.yaml): expected a finite number, "
     "got nan"),
    (cfg_with(task="sound"),
     "invalid value for config key 'task' (configs/x.yaml): expected one of "
     "'sound_localisation', 'action_localisation', got 'sound'"),
    (cfg_with(dataset={"trunc_thresh": 1.5}),
     "config key 'dataset.trunc_thresh' out of range (configs/x.yaml): expected 0.0 <= value "
     "<= 1.0, got 1.5"),
    (cfg_with(loader={"batch_size": 0}),
     "config key 'loader.batch_size' out of range (configs/x.yaml): expected value >= 1, got 0"),
    (cfg_with(model={"backbone_arch": [2, 2]}),
     "wrong length for config key 'model.backbone_arch' (configs/x.yaml): expected 3 items, got 2"),
    (cfg_with(model={"backbone_arch": [2, "x", 5]}),
     "wrong type for config key 'model.backbone_arch[1]' (configs/x.yaml): expected an integer, "
     "got 'x'"),
    (cfg_with(dataset={"crop_ratio": [0.5, 1.5]}),
     "config key 'dataset.crop_ratio[1]' out of range (configs/x.yaml): expected 0.0 <= value "
     "<= 1.0, got 1.5"),
    (cfg_with(dataset={"train_split": []}),
     "wrong length for config key 'dataset.train_split' (configs/x.yaml): expected at least "
     "1 item, got 0"),
    (cfg_with(dataset={"train_split": "train"}),
     "wrong type for config key 'dataset.train_split' (configs/x.yaml): expected a list, "
     "got 'train'"),
    (cfg_with(opt=3),
     "wrong type for config key 'opt' (configs/x.yaml): expected a mapping of keys (type, "
     "learning_rate, weight_decay, momentum, epochs, warmup, warmup_epochs, schedule_type, "
     "schedule_steps, schedule_gamma, eta_min, clip_grad_l2norm, early_stop_epochs), got 3"),
    (cfg_with(dataset={"modalities": [{"name": "a", "path": "a", "dim": 8, "ext": ".mp4"}]}),
     "invalid value for config key 'dataset.modalities[0].ext' (configs/x.yaml): expected one of "
     "'.npy', '.pt', '.h5', got '.mp4'"),
    (cfg_with(dataset={"modalities": ["audio"]}),
     "wrong type for config key 'dataset.modalities[0]' (configs/x.yaml): expected a mapping of "
     "keys (name, path, ext, dim, primary, rows_per_step, resample), got 'audio'"),
    (cfg_with(dataset={"modalities": []}),
     "wrong length for config key 'dataset.modalities' (configs/x.yaml): expected at least 1 "
     "item, got 0"),
])
def test_type_choice_range_errors(raw, msg):
    assert error(raw) == msg


def test_lenient_number_forms():
    cfg = resolved(cfg_with(loader={"batch_size": 8.0}, opt={"learning_rate": "1e-4"},
                                  dataset={"crop_ratio": [1, 1], "fps": None}), SRC)
    assert cfg["loader"]["batch_size"] == 8 and isinstance(cfg["loader"]["batch_size"], int)
    assert cfg["opt"]["learning_rate"] == 1e-4
    assert cfg["dataset"]["crop_ratio"] == [1.0, 1.0]
    assert resolve_config(cfg_with(dataset={"crop_ratio": None}), SRC).dataset.crop_ratio \
        is None


def test_missing_required_keys():
    assert error({"dataset": {"modalities": MINIMAL["dataset"]["modalities"]}}) == (
        "missing config key 'dataset.annotation_file' (configs/x.yaml): Perception Test "
        "annotation JSON, or a list of them merged by video id (e.g. the challenge's per-split "
        "files; README: data layout)")
    assert error({"dataset": {"annotation_file": "a"}}) == (
        "missing config key 'dataset.modalities' (configs/x.yaml): feature families, channels "
        "concatenated in this order")
    assert error(cfg_with(dataset={"modalities": [{"name": "a", "path": "p"}]})) == (
        "missing config key 'dataset.modalities[0].dim' (configs/x.yaml): "
        + MODALITY["dim"].doc)


# ----------------------------------------------------------------------------- cross-field checks

@pytest.mark.parametrize("raw, msg", [
    (mods(dict(A, primary=True), dict(A, path="b")),
     "config key 'dataset.modalities[1].name' (configs/x.yaml): expected unique modality names, "
     "got 'audio' twice"),
    (mods(A, VIDEO),
     "config key 'dataset.modalities' (configs/x.yaml): exactly one modality must have "
     "primary: true, got 0"),
    (mods(dict(A, primary=True), dict(VIDEO, primary=True)),
     "config key 'dataset.modalities' (configs/x.yaml): exactly one modality must have "
     "primary: true, got 2 (audio, video)"),
    (mods(dict(A, rows_per_step=2)),
     "config key 'dataset.modalities[0].rows_per_step' (configs/x.yaml): the primary modality "
     "must use 1, got 2"),
    (mods(dict(A, ext=".h5")),
     "config key 'dataset.modalities[0].ext' (configs/x.yaml): expected '.h5' exactly when the "
     "path ends in .h5, got ext '.h5' with path 'a'"),
    (mods(dict(VIDEO, ext=".npy")),
     "config key 'dataset.modalities[0].ext' (configs/x.yaml): expected '.h5' exactly when the "
     "path ends in .h5, got ext '.npy' with path 'feats/v.h5'"),
    (cfg_with(dataset={"time_grid": "stride"}),
     "missing config key 'dataset.fps' (configs/x.yaml): required with dataset.time_grid "
     "'stride': " + SCHEMA["dataset"]["fps"].doc),
    (cfg_with(dataset={"crop_ratio": [0.9, 0.5]}),
     "config key 'dataset.crop_ratio' (configs/x.yaml): expected [lo, hi] with 0 < lo <= hi, "
     "got [0.9, 0.5]"),
    (cfg_with(dataset={"crop_ratio": [0, 0.5]}),
     "config key 'dataset.crop_ratio' (configs/x.yaml): expected [lo, hi] with 0 < lo <= hi, "
     "got [0.0, 0.5]"),
    (cfg_with(model={"n_mha_win_size": [7, 7, -1]}),
     "wrong length for config key 'model.n_mha_win_size' (configs/x.yaml): expected 6 items "
     "(1 + model.backbone_arch[2]), got 3"),
    (cfg_with(model={"regression_range": [[0, 4]]}),
     "wrong length for config key 'model.regression_range' (configs/x.yaml): expected 6 items "
     "(1 + model.backbone_arch[2] - model.fpn_start_level), got 1"),
    (cfg_with(model={"fpn_start_level": 6}),
     "config key 'model.fpn_start_level' out of range (configs/x.yaml): expected value <= 5 "
     "(model.backbone_arch[2]), got 6"),
    (cfg_with(model={"regression_range": [[0, 4], [8, 4], [8, 16], [16, 32], [32, 64], [64]]}),
     "2 config problems (configs/x.yaml): config key 'model.regression_range[1]' "
     "(configs/x.yaml): expected a pair [lo, hi] of numbers with lo < hi, got [8, 4]; "
     "config key 'model.regression_range[5]' (configs/x.yaml): expected a pair [lo, hi] of "
     "numbers with lo < hi, got [64]"),
    (cfg_with(model={"embd_dim": 100}),
     "config key 'model.embd_dim' (configs/x.yaml): expected a multiple of model.n_head (8), "
     "got 100"),
    (cfg_with(model={"head_dim": 12}),
     "config key 'model.head_dim' (configs/x.yaml): expected a multiple of model.n_head (8), "
     "got 12"),
    (cfg_with(model={"neck": "fpn", "fpn_dim": 36}),
     "config key 'model.fpn_dim' (configs/x.yaml): expected a multiple of model.n_head (8), "
     "got 36"),
    (cfg_with(model={"embd_kernel_size": 4}),
     "config key 'model.embd_kernel_size' (configs/x.yaml): expected an odd kernel size, got 4"),
    (cfg_with(model={"proj_dims": [8]}),
     "config key 'model.proj_dims' (configs/x.yaml): only allowed with model.backbone 'fusion', "
     "got backbone 'single_stream'"),
    (cfg_with(model={"proj_dims": [8, 8], "backbone": "fusion"}),
     "wrong length for config key 'model.proj_dims' (configs/x.yaml): expected 1 items (one per "
     "modality) or 1 (one per stacked row group), got 2"),
    (cfg_with(dataset={"max_seq_len": 128}),
     "config key 'dataset.max_seq_len' (configs/x.yaml): expected a multiple of 96 (the model's "
     "max_div_factor), got 128"),
    (cfg_with(dataset={"max_seq_len": 16}, model={"backbone_arch": [2, 2, 1],
                                                  "n_mha_win_size": [7, 5],
                                                  "regression_range": [[0, 4], [4, 99]]}),
     "config key 'dataset.max_seq_len' (configs/x.yaml): expected a multiple of 6 (the stride x "
     "window factor of a pyramid level), got 16"),
])
def test_cross_field_checks(raw, msg):
    assert error(raw) == msg


def test_cross_field_valid_combinations():
    cfg = resolved(mods(dict(A, rows_per_step=2), dict(VIDEO, primary=True)), SRC)
    assert [m["primary"] for m in cfg["dataset"]["modalities"]] == [False, True]
    cfg = resolved(cfg_with(dataset={"time_grid": "stride", "fps": 15},
                                  model={"backbone": "fusion", "proj_dims": [4],
                                         "fpn_start_level": 1,
                                         "regression_range": [[0, 8]] * 5}), SRC)
    assert cfg["dataset"]["fps"] == 15.0 and cfg["model"]["proj_dims"] == [4]


def test_max_div_factor():
    assert resolve_config(MINIMAL, SRC).derived.max_div_factor == 96   # level 4: 16 * (7 // 2) * 2
    strides = [1, 2, 4, 8, 16, 32]
    assert max(level_div_factors(strides, [7] * 5 + [-1])) == 96
    assert max(level_div_factors(strides, [-1] * 6)) == 32
    assert level_div_factors([1], [1]) == [1]
    glob = resolve_config(cfg_with(model={"n_mha_win_size": [-1] * 6},
                                   dataset={"max_seq_len": 64}), SRC)
    assert glob.derived.max_div_factor == 32
