"""Strict config loading: YAML + ``--opt`` overrides, merged onto the schema and validated once.

``load_config(path, opts)`` reads a YAML file (an original-project config is mapped first, see
``libs/config/original.py``); ``resolve_config(raw, source, opts)`` does the rest for any raw
mapping (a checkpoint's stored config, a converted one). The result is a read-only
:class:`~libs.config.schema.Config` with every key present and ``derived`` computed. Unknown keys
(with the nearest valid key), wrong types, values out of range and inconsistent combinations are
:class:`UserError` s naming the key and the file (``--opt`` for overrides); several problems are
reported together. Paths are kept as written (relative to the working directory).
"""
from __future__ import annotations

import argparse
import logging
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

import yaml

from libs.common.errors import UserError
from libs.common.io import atomic_write_text
from libs.config.checks import check_cross_fields, compute_derived
from libs.config.overrides import OPT_SOURCE, apply_override, split_override
from libs.config.schema import Config, is_section, public_fields
from libs.config.spec import (DERIVED_SPEC, SCHEMA, TOP, Items, check_key, join_key, nearest_key,
                              raise_if, show_value, unknown_key)

__all__ = ["load_config", "resolve_config", "resolve_section", "config_to_yaml", "dump_config", "add_config_args",
           "describe_schema", "OPT_SOURCE"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- public API

def load_config(path: str | Path, opts: Sequence[str] = ()) -> Config:
    """Read the YAML config at ``path``, apply ``opts`` (``key.sub=value``) and resolve it."""
    source = str(path)
    raw = read_yaml_file(path)
    from libs.config import original  # the original project's layout comes in through one converter
    if isinstance(raw, dict) and original.is_original_config(raw):
        raw, notes = original.convert_original_config(raw, source)
        logger.info("%s is an original-project config; mapped to this schema:\n  %s", source,
                    "\n  ".join(notes))
    return resolve_config(raw, source, opts)


def read_yaml_file(path: str | Path) -> Any:
    """The parsed YAML file at ``path`` (a missing, unreadable or invalid file is a UserError)."""
    source, p = str(path), Path(path)
    if p.is_dir():
        raise UserError(f"config path is a directory ({source}): expected a YAML file")
    if not p.is_file():
        raise UserError(f"config file not found ({source}): expected an existing YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file ({source}): {err}") from None
    return read_yaml(text, source)


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML safely, refusing duplicate keys; a syntax error names the file and line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"config file is not valid YAML ({where}): {' '.join(problem.split())}") \
            from None


def resolve_config(raw: Any, source: str, opts: Optional[Sequence[str]] = ()) -> Config:
    """Merge ``raw`` (a user mapping) and the overrides ``opts`` onto the schema and validate.

    ``raw`` is not modified. ``source`` names the file in error messages.
    """
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else show_value(raw)
        raise UserError(f"wrong top level in config file ({source}): expected a mapping of "
                        f"sections ({', '.join(SCHEMA)}), got {got}")
    raw = _plain(raw)
    given = _given_keys(raw, SCHEMA, "")
    overridden: Set[str] = set()
    for entry in opts or ():
        parts, value = split_override(entry)
        apply_override(raw, parts, value, source)
        overridden.add(".".join(p for p in parts if not p.isdigit()))
        logger.debug("config override %s", entry)
    errs: List[str] = []
    cfg = _resolve_section(SCHEMA, raw, "", source, errs, valid=list(TOP))
    if isinstance(raw.get("derived"), dict):   # users may not add keys under derived
        errs.extend(unknown_key("derived", k, list(DERIVED_SPEC), source)
                    for k in raw["derived"] if k not in DERIVED_SPEC)
    raise_if(errs, source)
    errs.extend(check_cross_fields(cfg, source))
    raise_if(errs, source)
    for task, overlay in (cfg["test_cfg"]["per_task"] or {}).items():
        task_test_section(cfg["test_cfg"], overlay, f"test_cfg.per_task.{task}", source, errs)
    raise_if(errs, source)
    derived = compute_derived(cfg)
    errs.extend(_check_given_derived(raw.get("derived"), derived, source))
    raise_if(errs, source)
    cfg["derived"] = derived
    return _build(Config, cfg, source=source, given=frozenset(given - overridden),
                  overrides=frozenset(overridden))


def resolve_section(dotted: str, raw: Mapping[str, Any], source: str) -> Any:
    """One section validated on its own (e.g. ``'test_cfg.nms'`` for a tool's NMS options):
    defaults of the schema overlaid with ``raw``; returns the section's dataclass."""
    spec: Any = SCHEMA
    cls: Any = Config
    for part in dotted.split("."):
        spec, cls = spec[part], typing.get_type_hints(cls)[part]
    errs: List[str] = []
    values = _resolve_section(spec, _plain(dict(raw)), dotted, source, errs)
    raise_if(errs, source)
    return _build(cls, values)


# test_cfg keys a task may not set for itself (they hold for the whole run)
NOT_PER_TASK = ("per_task", "ext_score_file", "ext_score_topk", "ext_score_num_pred")


def task_test_section(shared: Mapping[str, Any], overlay: Any, name: str, source: str,
                      errs: List[str]) -> Optional[dict]:
    """The checked ``test_cfg`` of one task: ``shared`` (a checked test_cfg dict) overlaid with
    ``overlay`` (``test_cfg.per_task.<task>``); problems are appended to ``errs``."""
    spec = {k: v for k, v in SCHEMA["test_cfg"].items() if k not in NOT_PER_TASK}
    if not isinstance(overlay, dict):
        errs.append(f"wrong type for config key '{name}' ({source}): expected a mapping of "
                    f"test_cfg keys ({', '.join(spec)}), got {show_value(overlay)}")
        return None
    merged = {k: v for k, v in _plain(dict(shared)).items() if k in spec}
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    bad = [k for k in overlay if k in NOT_PER_TASK]
    errs.extend(f"config key '{name}.{k}' ({source}): holds for every task, expected it in "
                f"test_cfg only" for k in bad)
    merged = {k: v for k, v in merged.items() if k not in NOT_PER_TASK}
    return _resolve_section(spec, merged, name, source, errs)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (``load_config`` reads it back to an equal config)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None,
                          allow_unicode=True, width=100)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (temp file in the same folder + rename)."""
    atomic_write_text(path, config_to_yaml(cfg), what="config")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--opt KEY=VALUE [KEY=VALUE ...]`` (repeatable); ``args.opt`` is a flat list."""
    parser.add_argument(
        "--opt", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --opt opt.learning_rate=1e-4 "
             "dataset.modalities.0.path=feats/x (values are YAML; repeatable; put it after the "
             "positional arguments)")


def describe_schema() -> str:
    """A Markdown table of every config key: dotted name, default, description."""
    rows = ["| key | default | description |", "|---|---|---|"]

    def add(name: str, default: str, doc: str) -> None:
        rows.append(f"| `{name}` | {default} | {doc.replace('|', '/')} |")

    def walk(schema: Mapping[str, Any], prefix: str) -> None:
        for k, spec in schema.items():
            name = join_key(prefix, k)
            if isinstance(spec, dict):
                walk(spec, name)
            elif isinstance(spec, Items):
                add(name, "*required*", f"list of mappings: {spec.doc}")
                walk(spec.schema, f"{name}[]")
            else:
                add(name, "*required*" if spec.required else f"`{show_value(spec.default)}`", spec.doc)

    walk(SCHEMA, "")
    for k, spec in DERIVED_SPEC.items():
        add(f"derived.{k}", "*computed*", spec.doc)
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- YAML reading

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (each key may appear once per mapping)",
                key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# ----------------------------------------------------------------------------- resolution

def _resolve_section(schema: Mapping[str, Any], raw: Any, prefix: str, source: str,
                     errs: List[str], valid: Optional[List[str]] = None) -> Optional[dict]:
    """Defaults of ``schema`` overlaid with ``raw``; problems are appended to ``errs``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errs.append(f"wrong type for config key '{prefix}' ({source}): expected a mapping of "
                    f"keys ({', '.join(schema)}), got {show_value(raw)}")
        return None
    valid = list(schema) if valid is None else valid
    unknown = [k for k in raw if not isinstance(k, str) or k not in valid]
    errs.extend(unknown_key(prefix, k, valid, source) for k in unknown)
    # a misspelt required key is reported once, as the misspelling
    suggested = {nearest_key(prefix, str(k), valid) for k in unknown}
    out: Dict[str, Any] = {}
    for k, spec in schema.items():
        name = join_key(prefix, k)
        value = raw.get(k)
        if isinstance(spec, dict):
            out[k] = _resolve_section(spec, value, name, source, errs)
        elif isinstance(spec, Items):
            skip = value is None and name in suggested
            out[k] = [] if skip else _resolve_list(spec, value, name, source, errs)
        elif value is None and (spec.required or k not in raw):
            if spec.required and name not in suggested:
                errs.append(f"missing config key '{name}' ({source}): {spec.doc}")
            out[k] = _plain(spec.default)
        else:
            try:
                out[k] = check_key(spec, value, name, source)
            except UserError as err:
                errs.append(str(err))
    return out


def _resolve_list(spec: Items, raw: Any, name: str, source: str, errs: List[str]) -> list:
    if raw is None:
        errs.append(f"missing config key '{name}' ({source}): {spec.doc}")
        return []
    if not isinstance(raw, list):
        errs.append(f"wrong type for config key '{name}' ({source}): expected a list of mappings, "
                    f"got {show_value(raw)}")
        return []
    if len(raw) < spec.min_length:
        errs.append(f"wrong length for config key '{name}' ({source}): expected at least "
                    f"{spec.min_length} item{'s' if spec.min_length != 1 else ''}, got {len(raw)}")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            errs.append(f"wrong type for config key '{name}[{i}]' ({source}): expected a mapping "
                        f"of keys ({', '.join(spec.schema)}), got {show_value(item)}")
            continue
        items.append(_resolve_section(spec.schema, item, f"{name}[{i}]", source, errs))
    return items


def _given_keys(raw: Any, schema: Mapping[str, Any], prefix: str) -> Set[str]:
    """Dotted names of the schema keys that ``raw`` sets (a list of mappings counts as one key)."""
    out: Set[str] = set()
    if not isinstance(raw, dict):
        return out
    for k, spec in schema.items():
        if k in raw:
            name = join_key(prefix, k)
            out |= _given_keys(raw[k], spec, name) if isinstance(spec, dict) else {name}
    return out


def _check_given_derived(given: Any, computed: Mapping[str, Any], source: str) -> List[str]:
    """A dumped config's ``derived`` section must equal what the other keys give."""
    if given is None:
        return []
    if not isinstance(given, dict):
        return [f"wrong type for config key 'derived' ({source}): expected a mapping of keys "
                f"({', '.join(DERIVED_SPEC)}), got {show_value(given)}"]
    errs: List[str] = []
    for k, spec in DERIVED_SPEC.items():
        if k not in given:
            continue
        try:
            value = check_key(spec, given[k], f"derived.{k}", source)
        except UserError as err:
            errs.append(str(err))
            continue
        if value != computed[k]:
            errs.append(f"config key 'derived.{k}' ({source}): computed from the other keys, got "
                        f"{show_value(value)} but they give {show_value(computed[k])}")
    return errs


def _plain(value: Any) -> Any:
    """Tuples -> lists and dicts copied, recursively (the raw form the checks work on)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _build(cls: type, values: Mapping[str, Any], **internal: Any) -> Any:
    """The schema dataclass ``cls`` from a checked nested dict (lists become tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs: Dict[str, Any] = dict(internal)
    for f in public_fields(cls):
        v = values[f.name]
        hint = hints[f.name]
        if is_section(f) or f.name == "derived":
            kwargs[f.name] = _build(hint, v)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            item = typing.get_args(hint)[0]
            kwargs[f.name] = tuple(_build(item, x) for x in v)
        else:
            kwargs[f.name] = _frozen(v)
    return cls(**kwargs)
