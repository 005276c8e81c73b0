"""Tests of libs/config/loader.py: merge, strict keys, types, cross-field checks, overrides, dump."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from libs.config.checks import level_div_factors
from libs.config.loader import (add_config_args, config_to_yaml, describe_schema, dump_config,
                                load_config, resolve_config)
from libs.config.schema import Config
from libs.config.spec import DERIVED_SPEC, SCHEMA, Items, Leaf

MODALITY = SCHEMA["dataset"]["modalities"].schema


def resolved(*args, **kwargs) -> dict:
    """The resolved config as a plain dict (lists), for comparisons."""
    return resolve_config(*args, **kwargs).to_dict()


def loaded(*args, **kwargs) -> dict:
    return load_config(*args, **kwargs).to_dict()


def dims(cfg: dict) -> dict:
    return {k: cfg["derived"][k] for k in ("input_dims", "input_dim")}
from libs.common.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SRC = "configs/x.yaml"
MINIMAL = {"dataset": {"annotation_file": "ann.json",
                       "modalities": [{"name": "audio", "path": "feats/a", "dim": 8}]}}
VIDEO = {"name": "video", "path": "feats/v.h5", "dim": 16}


def cfg_with(**sections) -> dict:
    """MINIMAL with ``section={key: value}`` merged in (dataset keys merged, not replaced)."""
    raw = copy.deepcopy(MINIMAL)
    for sec, vals in sections.items():
        if isinstance(vals, dict) and isinstance(raw.get(sec), dict):
            raw[sec].update(vals)
        else:
            raw[sec] = vals
    return raw


def error(raw: dict, opts=()) -> str:
    with pytest.raises(UserError) as info:
        resolve_config(raw, SRC, opts)
    return str(info.value)


def write(tmp_path: Path, data, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


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
        "annotation JSON (README: data layout)")
    assert error({"dataset": {"annotation_file": "a"}}) == (
        "missing config key 'dataset.modalities' (configs/x.yaml): feature families, channels "
        "concatenated in this order")
    assert error(cfg_with(dataset={"modalities": [{"name": "a", "path": "p"}]})) == (
        "missing config key 'dataset.modalities[0].dim' (configs/x.yaml): "
        + MODALITY["dim"].doc)


# ----------------------------------------------------------------------------- cross-field checks

def mods(*items) -> dict:
    return cfg_with(dataset={"modalities": list(items)})


A = {"name": "audio", "path": "a", "dim": 8}


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


# ----------------------------------------------------------------------------- overrides

def test_overrides_are_typed():
    cfg = resolved(MINIMAL, SRC, [
        "loader.batch_size=4", "opt.learning_rate=0.5", "opt.schedule_steps=[1, 2]",
        "dataset.cache=false", "opt.early_stop_epochs=null", "output_folder=runs/a=b",
        "dataset.modalities.0.path=/x", "dataset.modalities[0].dim=32", "task=action_localisation",
        "test_cfg.ext_score_file=s: x: y"])
    assert cfg["loader"]["batch_size"] == 4 and cfg["opt"]["learning_rate"] == 0.5
    assert cfg["opt"]["schedule_steps"] == [1, 2] and cfg["dataset"]["cache"] is False
    assert cfg["opt"]["early_stop_epochs"] is None and cfg["output_folder"] == "runs/a=b"
    assert cfg["dataset"]["modalities"][0]["path"] == "/x"
    assert cfg["derived"]["input_dim"] == 32 and cfg["task"] == "action_localisation"
    assert cfg["test_cfg"]["ext_score_file"] == "s: x: y"   # not YAML: kept as the string


def test_override_appends_modality_and_merges_section():
    cfg = resolved(MINIMAL, SRC, ["dataset.modalities.0.primary=true",
                                        "dataset.modalities.1={name: v, path: v.h5, dim: 4}",
                                        "dataset.modalities.1.rows_per_step=2",
                                        "opt={epochs: 3}"])
    assert [m["name"] for m in cfg["dataset"]["modalities"]] == ["audio", "v"]
    assert cfg["derived"]["input_dims"] == [8, 8]
    assert cfg["opt"]["epochs"] == 3 and cfg["opt"]["learning_rate"] == 1e-3


@pytest.mark.parametrize("opt, msg", [
    ("opt.learning_rat=1",
     "unknown config key 'opt.learning_rat' (--opt): did you mean 'opt.learning_rate'?"),
    ("dataset.modalities.0.pth=x",
     "unknown config key 'dataset.modalities[0].pth' (--opt): did you mean "
     "'dataset.modalities[0].path'?"),
    ("dataset.modalities.5.path=x",
     "list index out of range for config key 'dataset.modalities[5]' (--opt): expected an index "
     "<= 1"),
    ("opt.learning_rate.x=1",
     "unknown config key 'opt.learning_rate.x' (--opt): 'opt.learning_rate' is a value, not a "
     "section"),
    ("opt.learning_rate",
     "invalid override 'opt.learning_rate' (--opt): expected KEY=VALUE, e.g. "
     "opt.learning_rate=0.001"),
    ("loader.batch_size=abc",
     "wrong type for config key 'loader.batch_size' (configs/x.yaml): expected an integer, "
     "got 'abc'"),
])
def test_override_errors(opt, msg):
    assert error(MINIMAL, [opt]) == msg


def test_add_config_args_collects_flat_list():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    add_config_args(parser)
    args = parser.parse_args(["c.yaml", "--opt", "a=1", "b=2", "--opt", "c=3"])
    assert args.opt == ["a=1", "b=2", "c=3"]
    assert parser.parse_args(["c.yaml"]).opt == []


# ----------------------------------------------------------------------------- files, dump, derived

def test_load_config_file_and_opts(tmp_path):
    path = write(tmp_path, cfg_with(opt={"epochs": 7}))
    cfg = loaded(path, ["loader.num_workers=0"])
    assert cfg["opt"]["epochs"] == 7 and cfg["loader"]["num_workers"] == 0


@pytest.mark.parametrize("text, msg", [
    (None, "config file not found ({p}): expected an existing YAML file"),
    ("a: [1,\n", "config file is not valid YAML ({p}, line 2): expected the node content, "
                 "but found '<stream end>'"),
    ("opt:\n  epochs: 1\n  epochs: 2\n", "config file is not valid YAML ({p}, line 3): duplicate "
                                         "key 'epochs' (each key may appear once per mapping)"),
    ("- 1\n- 2\n", "wrong top level in config file ({p}): expected a mapping of sections (task, "
                   "seed, output_folder, dataset, loader, model, train_cfg, opt, train, test_cfg), "
                   "got [1, 2]"),
    ("", "wrong top level in config file ({p}): expected a mapping of sections (task, seed, "
         "output_folder, dataset, loader, model, train_cfg, opt, train, test_cfg), got an empty "
         "file"),
])
def test_load_config_file_errors(tmp_path, text, msg):
    path = tmp_path / "x.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value) == msg.format(p=path)


def test_dump_load_round_trip(tmp_path):
    raw = mods(dict(A, rows_per_step=3), dict(VIDEO, primary=True, resample="centre"))
    raw["opt"] = {"eta_min": 1e-9, "schedule_steps": [3, 5]}
    cfg = resolve_config(raw, SRC)
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    assert list(tmp_path.iterdir()) == [path]          # no temp file left behind
    assert load_config(path) == cfg
    assert yaml.safe_load(config_to_yaml(cfg)) == cfg.to_dict()
    assert dims(cfg.to_dict()) == {"input_dims": [24, 16], "input_dim": 40}


def test_derived_recomputed_and_mismatch(tmp_path):
    cfg = resolve_config(MINIMAL, SRC)
    cfg = dataclasses.replace(cfg, derived=dataclasses.replace(cfg.derived, input_dim=99))
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value) == (f"config key 'derived.input_dim' ({path}): computed from the "
                               "other keys, got 99 but they give 8")
    assert error(cfg_with(derived={"input_dims": [4]})) == (
        "config key 'derived.input_dims' (configs/x.yaml): computed from the other keys, "
        "got [4] but they give [8]")
    assert resolved(cfg_with(derived={"input_dim": 8}), SRC)["derived"]["input_dims"] == [8]


def test_describe_schema_covers_every_key():
    table = describe_schema()
    assert table.startswith("| key | default | description |\n|---|---|---|\n")

    def walk(schema, prefix):
        for k, spec in schema.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(spec, dict):
                yield from walk(spec, name)
            elif isinstance(spec, Items):
                yield name, spec.doc
                yield from walk(spec.schema, name + "[]")
            else:
                assert isinstance(spec, Leaf)
                yield name, spec.doc

    keys = list(walk(SCHEMA, ""))
    assert len(keys) > 90
    for name, doc in keys:
        assert doc.strip(), name
        assert f"| `{name}` |" in table, name
    for name, spec in DERIVED_SPEC.items():
        assert spec.doc.strip() and f"| `derived.{name}` | *computed* |" in table
    assert "| `dataset.annotation_file` | *required* |" in table
    assert "| `opt.learning_rate` | `0.001` |" in table


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    bad = write(tmp_path, cfg_with(opt={"learning_rat": 1}))
    code = ("import sys; from libs.common.errors import run_cli; "
            "from libs.config.loader import load_config; "
            "run_cli(lambda argv: load_config(sys.argv[1]) and 0)")
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (f"error: unknown config key 'opt.learning_rat' ({bad}): did you mean "
                           "'opt.learning_rate'?\n")


def test_identity_neck_width_and_empty_classes(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": {"annotation_file": "a.json", "num_classes": 4,
                    "modalities": [{"name": "audio", "path": "feats/a", "dim": 8}]},
        "model": {"fpn_dim": 256}, "train_cfg": {"head_empty_cls": [1, 4]}}))
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'model.fpn_dim'" in msg and "identity neck" in msg
    assert "'train_cfg.head_empty_cls'" in msg and "[4]" in msg
