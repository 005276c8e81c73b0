"""Strict config loading: YAML + ``--opt`` overrides, merged onto ``defaults.SCHEMA`` and validated.

``load_config(path, opts)`` reads a YAML file; ``resolve_config(raw, source, opts)`` does the rest
for any raw mapping (e.g. one converted from the original project's layout). The result is a plain
nested dict (dict/list/str/int/float/bool/None) with every key of the schema present, plus
``cfg["derived"] = {"input_dims": [...], "input_dim": int}``. Unknown keys, wrong types, values out
of range and inconsistent combinations are :class:`UserError` s naming the key and the file
(``--opt`` for overrides); when several keys are wrong they are reported together.
Paths are kept as written (relative to the working directory).
"""
from __future__ import annotations

import argparse
import copy
import difflib
import logging
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from libs.config.schema import DERIVED, SCHEMA, Key, ListOf
from libs.config.checks import check_cross_fields, max_div_factor, show_value
from libs.common.errors import UserError, format_problems
from libs.common.io import atomic_write_text

__all__ = ["load_config", "resolve_config", "config_to_yaml", "dump_config", "add_config_args",
           "describe_schema", "max_div_factor", "OPT_SOURCE"]

logger = logging.getLogger(__name__)

OPT_SOURCE = "--opt"
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list"}
# PyYAML (YAML 1.1) reads `1e-4` as a string; float keys accept that spelling.
_FLOAT_STR = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_INDEX = re.compile(r"\[(\d+)\]")

_DERIVED_KEYS = {
    "input_dims": Key(None, DERIVED["input_dims"], list, item=int),
    "input_dim": Key(None, DERIVED["input_dim"], int),
}
# Top level as the user may write it: the schema plus the (recomputed) derived section.
_TOP: Dict[str, Any] = dict(SCHEMA, derived=_DERIVED_KEYS)


# ----------------------------------------------------------------------------- public API

def load_config(path: str | Path, opts: Sequence[str] = ()) -> dict:
    """Read the YAML config at ``path``, apply ``opts`` (``key.sub=value``) and resolve it."""
    source = str(path)
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config path is a directory ({source}): expected a YAML file")
    if not p.is_file():
        raise UserError(f"config file not found ({source}): expected an existing YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file ({source}): {err}") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"config file is not valid YAML ({where}): {' '.join(problem.split())}") \
            from None
    from libs.config import original as compat  # the original project's layout comes in through one converter
    if isinstance(raw, dict) and compat.is_original_config(raw):
        raw, notes = compat.convert_original_config(raw, source)
        logger.info("%s is an original-project config; mapped to this schema:\n  %s", source,
                    "\n  ".join(notes))
    return resolve_config(raw, source, opts)


def resolve_config(raw: Any, source: str, opts: Optional[Sequence[str]] = ()) -> dict:
    """Merge ``raw`` (a user mapping) and the overrides ``opts`` onto the schema and validate.

    ``raw`` is not modified. ``source`` names the file in error messages.
    """
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else show_value(raw)
        raise UserError(f"wrong top level in config file ({source}): expected a mapping of "
                        f"sections ({', '.join(SCHEMA)}), got {got}")
    raw = copy.deepcopy(raw)
    for entry in opts or ():
        parts, value = _split_override(entry)
        _apply_override(raw, parts, value, source)
        logger.debug("config override %s", entry)
    errs: List[str] = []
    cfg = _resolve_section(SCHEMA, raw, "", source, errs, valid=list(_TOP))
    if isinstance(raw.get("derived"), dict):   # users may not add keys under derived
        errs.extend(_unknown_key("derived", k, list(DERIVED), source)
                    for k in raw["derived"] if k not in DERIVED)
    _raise_if(errs, source)
    errs.extend(check_cross_fields(cfg, source))
    derived = _compute_derived(cfg)
    if not errs:
        errs.extend(_check_given_derived(raw.get("derived"), derived, source))
    _raise_if(errs, source)
    cfg["derived"] = derived
    return cfg


def config_to_yaml(cfg: Mapping[str, Any]) -> str:
    """The resolved config as YAML text (``load_config`` reads it back unchanged)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True,
                          width=100)


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
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
            name = _join(prefix, k)
            if isinstance(spec, dict):
                walk(spec, name)
            elif isinstance(spec, ListOf):
                add(name, "*required*", f"list of mappings: {spec.doc}")
                walk(spec.schema, f"{name}[]")
            else:
                add(name, "*required*" if spec.required else f"`{show_value(spec.default)}`", spec.doc)

    walk(SCHEMA, "")
    for k, doc in DERIVED.items():
        add(f"derived.{k}", "*computed*", doc)
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


# ----------------------------------------------------------------------------- merge + types

def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _raise_if(errs: List[str], source: str) -> None:
    if len(errs) == 1:
        raise UserError(errs[0])
    if errs:
        raise UserError(format_problems(errs, f"{len(errs)} config problems ({source})"))


def _unknown_key(prefix: str, key: Any, valid: Sequence[str], source: str) -> str:
    """``unknown config key 'a.b' (src): did you mean 'a.c'?`` (or the list of valid keys)."""
    msg = f"unknown config key '{_join(prefix, str(key))}' ({source}): "
    near = _nearest_key(prefix, str(key), valid)
    if near is not None:
        return msg + f"did you mean '{near}'?"
    where = f"valid keys in '{prefix}' are" if prefix else "valid top-level keys are"
    return msg + f"{where} {', '.join(valid)}"


def _nearest_key(prefix: str, key: str, valid: Sequence[str]) -> Optional[str]:
    """The dotted valid key nearest to ``key``: same section first, then any other section."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    if close:
        return _join(prefix, close[0])
    best, best_ratio = None, 0.8
    for sec_prefix, sec in _sections():
        for cand in sec if sec_prefix != prefix else ():
            ratio = difflib.SequenceMatcher(None, key, cand).ratio()
            if ratio >= best_ratio and (best is None or ratio > best_ratio):
                best, best_ratio = _join(sec_prefix, cand), ratio
    return best


def _sections() -> List[Tuple[str, List[str]]]:
    """Every (section prefix, its keys) of the schema, modality items excluded."""
    out = [("", list(_TOP))]
    out += [(k, list(v)) for k, v in _TOP.items() if isinstance(v, dict)]
    return out


def _check_scalar(value: Any, typ: type, name: str, source: str) -> Any:
    ok = False
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        if isinstance(value, str) and _FLOAT_STR.match(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise UserError(f"wrong type for config key '{name}' ({source}): expected a finite "
                            f"number, got {show_value(value)}")
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is list:
        ok = isinstance(value, list)
    else:
        raise AssertionError(f"unsupported schema type {typ} for {name}")
    if not ok:
        raise UserError(f"wrong type for config key '{name}' ({source}): expected "
                        f"{_TYPE_NAMES[typ]}, got {show_value(value)}")
    return value


def _check_range(value: Any, key: Key, name: str, source: str) -> None:
    lo, hi = key.min, key.max
    if (lo is None or value >= lo) and (hi is None or value <= hi):
        return
    if lo is not None and hi is not None:
        expected = f"{show_value(lo)} <= value <= {show_value(hi)}"
    else:
        expected = f"value >= {show_value(lo)}" if lo is not None else f"value <= {show_value(hi)}"
    raise UserError(f"config key '{name}' out of range ({source}): expected {expected}, "
                    f"got {show_value(value)}")


def _check_key(key: Key, value: Any, name: str, source: str) -> Any:
    """Return ``value`` converted to the key's type, or raise a UserError naming ``name``."""
    if value is None:
        if key.nullable:
            return None
        raise UserError(f"wrong type for config key '{name}' ({source}): expected "
                        f"{_TYPE_NAMES[key.type]}, got null")
    value = _check_scalar(value, key.type, name, source)
    if key.type is list:
        n = len(value)
        if key.length is not None and n != key.length:
            raise UserError(f"wrong length for config key '{name}' ({source}): expected "
                            f"{key.length} items, got {n}")
        if key.min_length is not None and n < key.min_length:
            raise UserError(f"wrong length for config key '{name}' ({source}): expected at least "
                            f"{key.min_length} item{'s' if key.min_length != 1 else ''}, got {n}")
        if key.item is not None:
            items = []
            for i, v in enumerate(value):
                v = _check_scalar(v, key.item, f"{name}[{i}]", source)
                if key.item in (int, float):
                    _check_range(v, key, f"{name}[{i}]", source)
                items.append(v)
            value = items
    elif key.type in (int, float):
        _check_range(value, key, name, source)
    if key.choices is not None and value not in key.choices:
        choices = ", ".join(show_value(c) for c in key.choices)
        raise UserError(f"invalid value for config key '{name}' ({source}): expected one of "
                        f"{choices}, got {show_value(value)}")
    return value


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
    errs.extend(_unknown_key(prefix, k, valid, source) for k in unknown)
    # a misspelt required key is reported once, as the misspelling
    suggested = {_nearest_key(prefix, str(k), valid) for k in unknown}
    out: Dict[str, Any] = {}
    for k, spec in schema.items():
        name = _join(prefix, k)
        given = raw.get(k)
        if isinstance(spec, dict):
            out[k] = _resolve_section(spec, given, name, source, errs)
        elif isinstance(spec, ListOf):
            skip = given is None and name in suggested
            out[k] = [] if skip else _resolve_list(spec, given, name, source, errs)
        elif given is None and (spec.required or k not in raw):
            if spec.required and name not in suggested:
                errs.append(f"missing config key '{name}' ({source}): {spec.doc}")
            out[k] = copy.deepcopy(spec.default)
        else:
            try:
                out[k] = _check_key(spec, given, name, source)
            except UserError as err:
                errs.append(str(err))
    return out


def _resolve_list(spec: ListOf, raw: Any, name: str, source: str, errs: List[str]) -> list:
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


# ----------------------------------------------------------------------------- cross-field checks

def _compute_derived(cfg: Mapping[str, Any]) -> dict:
    dims = [m["dim"] * m["rows_per_step"] for m in cfg["dataset"]["modalities"]]
    return {"input_dims": dims, "input_dim": sum(dims)}


def _check_given_derived(given: Any, computed: Mapping[str, Any], source: str) -> List[str]:
    """A dumped config's ``derived`` section must equal what the modalities give."""
    errs: List[str] = []
    if given is None:
        return errs
    if not isinstance(given, dict):
        return [f"wrong type for config key 'derived' ({source}): expected a mapping of keys "
                f"({', '.join(DERIVED)}), got {show_value(given)}"]
    for k, key in _DERIVED_KEYS.items():
        if k not in given:
            continue
        try:
            value = _check_key(key, given[k], f"derived.{k}", source)
        except UserError as err:
            errs.append(str(err))
            continue
        if value != computed[k]:
            errs.append(f"config key 'derived.{k}' ({source}): computed from dataset.modalities, "
                        f"got {show_value(value)} but the modalities give {show_value(computed[k])}")
    return errs


# ----------------------------------------------------------------------------- overrides

def _split_override(entry: str) -> Tuple[List[str], Any]:
    """``'a.b[0].c=VALUE'`` -> (['a', 'b', '0', 'c'], YAML-parsed VALUE or the raw string)."""
    key, sep, text = str(entry).partition("=")
    key = _INDEX.sub(r".\1", key.strip())
    parts = key.split(".")
    if not sep or not key or "" in parts:
        raise UserError(f"invalid override '{entry}' ({OPT_SOURCE}): expected KEY=VALUE, e.g. "
                        f"opt.learning_rate=0.001")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return parts, value


def _apply_override(raw: dict, parts: List[str], value: Any, source: str) -> None:
    """Set ``raw[parts...] = value``, checking each step against the schema."""
    node: Any = raw
    spec: Any = _TOP
    prefix = ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(spec, ListOf):
            if not part.isdigit():
                raise UserError(f"unknown config key '{prefix}.{part}' ({OPT_SOURCE}): expected a "
                                f"list index, e.g. '{prefix}.0.{next(iter(spec.schema))}'")
            idx = int(part)
            if idx > len(node):
                raise UserError(f"list index out of range for config key '{prefix}[{idx}]' "
                                f"({OPT_SOURCE}): expected an index <= {len(node)}")
            name = f"{prefix}[{idx}]"
            if idx == len(node):
                node.append(value if last else {})
            elif last:
                node[idx] = value
            if last:
                return
            if not isinstance(node[idx], dict):
                raise UserError(f"wrong type for config key '{name}' ({source}): expected a "
                                f"mapping, got {show_value(node[idx])}")
            node, spec, prefix = node[idx], spec.schema, name
            continue
        if part not in spec:
            raise UserError(_unknown_key(prefix, part, list(spec), OPT_SOURCE))
        name, child_spec = _join(prefix, part), spec[part]
        if last:
            if isinstance(value, dict) and isinstance(node.get(part), dict):
                _merge_into(node[part], value)
            else:
                node[part] = value
            return
        if isinstance(child_spec, Key):
            raise UserError(f"unknown config key '{_join(name, parts[depth + 1])}' ({OPT_SOURCE}): "
                            f"'{name}' is a value, not a section")
        want = list if isinstance(child_spec, ListOf) else dict
        if node.get(part) is None:
            node[part] = want()
        if not isinstance(node[part], want):
            kind = "a list of mappings" if want is list else "a mapping"
            raise UserError(f"wrong type for config key '{name}' ({source}): expected {kind}, got "
                            f"{show_value(node[part])}")
        node, spec, prefix = node[part], child_spec, name


def _merge_into(dst: dict, src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_into(dst[k], v)
        else:
            dst[k] = v
