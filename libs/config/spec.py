"""Validation specs generated from the schema dataclasses, and the checks of one value.

``SCHEMA`` mirrors :class:`libs.config.schema.Config`: a dict per section, a :class:`Leaf` per key
(type, nullability and list item type read from the field annotation, constraints from its
:class:`~libs.config.schema.Key`), an :class:`Items` for a list of mappings (modalities).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from libs.common.errors import UserError, format_problems
from libs.config.schema import Config, Derived, Key, is_section, public_fields

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list", dict: "a mapping"}
# PyYAML (YAML 1.1) reads `1e-4` as a string; float keys accept that spelling.
FLOAT_STR = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

# Keys of the previous schema that now live elsewhere: an old config gets the new name.
RENAMED_KEYS = {
    "test_cfg.nms_method": "test_cfg.nms.method (values 'hard', 'linear', 'gaussian'; 'soft' is "
                           "now 'gaussian')",
    "test_cfg.nms_sigma": "test_cfg.nms.sigma", "test_cfg.iou_threshold": "test_cfg.nms.iou_threshold",
    "test_cfg.min_score": "test_cfg.nms.min_score", "test_cfg.max_seg_num": "test_cfg.nms.max_seg_num",
    "test_cfg.multiclass_nms": "test_cfg.nms.multiclass",
    "test_cfg.voting_thresh": "test_cfg.nms.voting_thresh",
    "test_cfg.nms_backend": "test_cfg.nms.backend",
}


@dataclass(frozen=True)
class Leaf:
    """One key: its default, doc, accepted type (``list`` for tuples, items of type ``item``)."""
    default: Any
    doc: str
    type: type
    nullable: bool = False
    required: bool = False
    choices: Optional[Tuple[Any, ...]] = None
    min: Optional[float] = None
    max: Optional[float] = None
    item: Optional[type] = None
    length: Optional[int] = None
    min_length: Optional[int] = None
    one_or_list: bool = False    # ``Union[X, Tuple[X, ...]]``: one X or a list of X, kept as given
    per_task: bool = False       # ``Union[X, Dict[str, X]]``: one X or a mapping {task: X}


@dataclass(frozen=True)
class Items:
    """A list of mappings, each validated against ``schema`` and built as ``cls``."""
    cls: type
    schema: Mapping[str, Any]
    doc: str
    min_length: int = 1


def _unwrap_optional(hint: Any) -> Tuple[Any, bool]:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), nullable
    return hint, False


def spec_of(cls: type) -> Dict[str, Any]:
    """The validation spec of a schema dataclass (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    out: Dict[str, Any] = {}
    for f in public_fields(cls):
        if is_section(f):
            out[f.name] = spec_of(hints[f.name])
            continue
        if "key" not in f.metadata:
            continue
        k: Key = f.metadata["key"]
        hint, nullable = _unwrap_optional(hints[f.name])
        if typing.get_origin(hint) is typing.Union:   # one X, or a list / a mapping of X
            scalar, other = typing.get_args(hint)
            per_task = other == Dict[str, scalar]
            assert per_task or other == Tuple[scalar, ...], \
                f"unsupported schema type {hint} for {f.name}"
            out[f.name] = Leaf(f.default, k.doc, scalar, nullable, k.required, k.choices, k.min,
                               k.max, scalar, k.length, k.min_length, one_or_list=not per_task,
                               per_task=per_task)
            continue
        if typing.get_origin(hint) is dict:
            out[f.name] = Leaf(f.default, k.doc, dict, nullable, k.required)
            continue
        typ, item = hint, None
        if typing.get_origin(hint) is tuple:
            typ, item = list, typing.get_args(hint)[0]
            if dataclasses.is_dataclass(item):
                out[f.name] = Items(item, spec_of(item), k.doc, k.min_length or 1)
                continue
            if typing.get_origin(item) is tuple:
                item = list
        out[f.name] = Leaf(f.default, k.doc, typ, nullable, k.required, k.choices, k.min, k.max,
                           item, k.length, k.min_length)
    return out


SCHEMA: Dict[str, Any] = spec_of(Config)           # derived and internal fields excluded
DERIVED_SPEC: Dict[str, Leaf] = spec_of(Derived)
# Top level as the user may write it: the schema plus the (recomputed) derived section.
TOP: Dict[str, Any] = dict(SCHEMA, derived=DERIVED_SPEC)


def show_value(value: Any) -> str:
    """A value as it reads in an error message (YAML-like, strings quoted, one line)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show_value(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def raise_if(errs: List[str], source: str) -> None:
    if len(errs) == 1:
        raise UserError(errs[0])
    if errs:
        raise UserError(format_problems(errs, f"{len(errs)} config problems ({source})"))


def unknown_key(prefix: str, key: Any, valid: Sequence[str], source: str) -> str:
    """``unknown config key 'a.b' (src): did you mean 'a.c'?`` (or the list of valid keys)."""
    msg = f"unknown config key '{join_key(prefix, str(key))}' ({source}): "
    if join_key(prefix, str(key)) in RENAMED_KEYS:
        return msg + f"renamed, use {RENAMED_KEYS[join_key(prefix, str(key))]}"
    near = nearest_key(prefix, str(key), valid)
    if near is not None:
        return msg + f"did you mean '{near}'?"
    where = f"valid keys in '{prefix}' are" if prefix else "valid top-level keys are"
    return msg + f"{where} {', '.join(valid)}"


def nearest_key(prefix: str, key: str, valid: Sequence[str]) -> Optional[str]:
    """The dotted valid key nearest to ``key``: same section first, then any other section."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    if close:
        return join_key(prefix, close[0])
    best, best_ratio = None, 0.8
    for sec_prefix, sec in _sections():
        for cand in sec if sec_prefix != prefix else ():
            ratio = difflib.SequenceMatcher(None, key, cand).ratio()
            if ratio >= best_ratio and (best is None or ratio > best_ratio):
                best, best_ratio = join_key(sec_prefix, cand), ratio
    return best


def _sections() -> List[Tuple[str, List[str]]]:
    """Every (section prefix, its keys) of the schema, modality items excluded."""
    out: List[Tuple[str, List[str]]] = []

    def walk(prefix: str, spec: Mapping[str, Any]) -> None:
        out.append((prefix, list(spec)))
        for k, v in spec.items():
            if isinstance(v, dict):
                walk(join_key(prefix, k), v)

    walk("", TOP)
    return out


def check_scalar(value: Any, typ: type, name: str, source: str) -> Any:
    ok = False
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        if isinstance(value, str) and FLOAT_STR.match(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise UserError(f"wrong type for config key '{name}' ({source}): expected a finite "
                            f"number, got {show_value(value)}")
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is list:
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    elif typ is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    else:
        raise AssertionError(f"unsupported schema type {typ} for {name}")
    if not ok:
        raise UserError(f"wrong type for config key '{name}' ({source}): expected "
                        f"{_TYPE_NAMES[typ]}, got {show_value(value)}")
    return value


def _check_range(value: Any, key: Leaf, name: str, source: str) -> None:
    lo, hi = key.min, key.max
    if (lo is None or value >= lo) and (hi is None or value <= hi):
        return
    if lo is not None and hi is not None:
        expected = f"{show_value(lo)} <= value <= {show_value(hi)}"
    else:
        expected = f"value >= {show_value(lo)}" if lo is not None else f"value <= {show_value(hi)}"
    raise UserError(f"config key '{name}' out of range ({source}): expected {expected}, "
                    f"got {show_value(value)}")


def check_key(key: Leaf, value: Any, name: str, source: str) -> Any:
    """Return ``value`` converted to the key's type, or raise a UserError naming ``name``."""
    if value is None:
        if key.nullable:
            return None
        raise UserError(f"wrong type for config key '{name}' ({source}): expected "
                        f"{_TYPE_NAMES[key.type]}, got null")
    if key.per_task and isinstance(value, dict):
        out = {}
        for task, v in value.items():
            out[task] = check_key(dataclasses.replace(key, per_task=False), v,
                                  f"{name}.{task}", source)
        return out
    if key.per_task and not isinstance(value, (int, float, str, bool)):
        raise UserError(f"wrong type for config key '{name}' ({source}): expected "
                        f"{_TYPE_NAMES[key.type]} or a mapping {{task: value}}, got "
                        f"{show_value(value)}")
    if key.one_or_list:
        if isinstance(value, (list, tuple)):
            return check_key(dataclasses.replace(key, type=list, one_or_list=False), value, name,
                             source)
        if not isinstance(value, key.type):
            raise UserError(f"wrong type for config key '{name}' ({source}): expected "
                            f"{_TYPE_NAMES[key.type]} or a list of them, got {show_value(value)}")
    value = check_scalar(value, key.type, name, source)
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
                v = check_scalar(v, key.item, f"{name}[{i}]", source)
                if key.item in (int, float):
                    _check_range(v, key, f"{name}[{i}]", source)
                items.append(v)
            value = items
    elif key.type in (int, float):
        _check_range(value, key, name, source)
    if key.choices is not None:
        listed = value if key.type is list else [value]
        for i, v in enumerate(listed):
            if v in key.choices:
                continue
            choices = ", ".join(show_value(c) for c in key.choices)
            where = f"{name}[{i}]" if key.type is list else name
            raise UserError(f"invalid value for config key '{where}' ({source}): expected one of "
                            f"{choices}, got {show_value(v)}")
    return value
