"""Shared helpers of the config tests: minimal raw configs and resolution shortcuts."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from libs.common.errors import UserError
from libs.config.loader import load_config, resolve_config
from libs.config.spec import SCHEMA

MODALITY = SCHEMA["dataset"]["modalities"].schema


def resolved(*args, **kwargs) -> dict:
    """The resolved config as a plain dict (lists), for comparisons."""
    return resolve_config(*args, **kwargs).to_dict()


def loaded(*args, **kwargs) -> dict:
    return load_config(*args, **kwargs).to_dict()


def dims(cfg: dict) -> dict:
    return {k: cfg["derived"][k] for k in ("input_dims", "input_dim")}

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


def mods(*items) -> dict:
    return cfg_with(dataset={"modalities": list(items)})


A = {"name": "audio", "path": "a", "dim": 8}
