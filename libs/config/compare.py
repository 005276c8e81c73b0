"""Comparing two configs' architectures: resuming a run, and evaluating a checkpoint with a YAML.

The architecture is what a model's weights depend on or were trained with: the task(s) (one head
per task), every ``model`` key, ``dataset.num_classes``, ``dataset.max_seq_len`` and the input channel groups the modalities give
(``derived.input_groups``).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, List

from libs.common.errors import UserError, format_problems
from libs.config.loader import resolve_config
from libs.config.schema import Config, ModelConfig
from libs.config.spec import show_value

logger = logging.getLogger(__name__)

ARCHITECTURE_KEYS = ("task",) + tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)) + (
    "dataset.num_classes", "dataset.max_seq_len")


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def _set(d: dict, dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for part in head:
        d = d[part]
    d[last] = value


def architecture_diff(a: Config, b: Config) -> List[str]:
    """``'KEY: A vs B'`` for every architecture key (and the input groups) where ``a`` and ``b``
    differ; empty when the same model can be built from both."""
    da, db = a.to_dict(), b.to_dict()
    out = [f"{k}: {show_value(_get(da, k))} vs {show_value(_get(db, k))}"
           for k in ARCHITECTURE_KEYS if _get(da, k) != _get(db, k)]
    if a.derived.input_groups != b.derived.input_groups:
        out.append(f"input channel groups from dataset.modalities: "
                   f"{show_value(list(a.derived.input_groups))} vs "
                   f"{show_value(list(b.derived.input_groups))}")
    return out


def with_architecture_of(cfg: Config, ckpt_cfg: Config, ckpt_path: str) -> Config:
    """``cfg`` (data, split, post-processing) with the architecture of ``ckpt_cfg``.

    An architecture key the config file sets must agree with the checkpoint; one set with
    ``--opt`` is an explicit choice and wins (logged); any other is taken from the checkpoint.
    Disagreements are one :class:`UserError` naming every key.
    """
    merged = cfg.to_dict()
    theirs = ckpt_cfg.to_dict()
    conflicts = []
    for k in ARCHITECTURE_KEYS:
        mine, ck = _get(merged, k), _get(theirs, k)
        if mine == ck:
            continue
        if k in cfg.overrides:
            logger.info("%s %s from --opt replaces the checkpoint's %s", k, show_value(mine),
                        show_value(ck))
        elif k in cfg.given:
            conflicts.append(f"{k} {show_value(mine)} in the config, {show_value(ck)} in the "
                             f"checkpoint")
        else:
            _set(merged, k, ck)
    if conflicts:
        raise UserError(format_problems(
            conflicts, f"config disagrees with the checkpoint's architecture ({cfg.source} vs "
                       f"{ckpt_path}); remove these keys from the config or choose a value with "
                       f"--opt KEY=VALUE"))
    merged.pop("derived")
    out = resolve_config(merged, cfg.source)
    if out.derived.input_groups != ckpt_cfg.derived.input_groups:
        raise UserError(f"features do not fit the checkpoint's model (dataset.modalities, "
                        f"{cfg.source}): they give input channel groups "
                        f"{show_value(list(out.derived.input_groups))}, the model of {ckpt_path} "
                        f"takes {show_value(list(ckpt_cfg.derived.input_groups))}")
    return dataclasses.replace(out, given=cfg.given, overrides=cfg.overrides)
