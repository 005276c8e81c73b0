"""Tests of libs/config/loader.py: --opt overrides, files, dump/load, derived values, the docs table."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
import yaml

from libs.common.errors import UserError
from libs.config.loader import (add_config_args, config_to_yaml, describe_schema, dump_config,
                                load_config, resolve_config)
from libs.config.spec import DERIVED_SPEC, SCHEMA, Items, Leaf
from config_helpers import (A, MINIMAL, MODALITY, REPO, SRC, VIDEO, cfg_with, dims, error, loaded,  # noqa: F401
                            mods, resolved, write)


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
