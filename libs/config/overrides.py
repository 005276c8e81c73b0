"""``--opt KEY=VALUE`` overrides: parsing and applying them to a raw config mapping."""
from __future__ import annotations

import re
from typing import Any, List, Mapping, Tuple

import yaml

from libs.common.errors import UserError
from libs.config.spec import TOP, Items, Leaf, join_key, show_value, unknown_key

OPT_SOURCE = "--opt"
_INDEX = re.compile(r"\[(\d+)\]")


def split_override(entry: str) -> Tuple[List[str], Any]:
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


def apply_override(raw: dict, parts: List[str], value: Any, source: str) -> None:
    """Set ``raw[parts...] = value``, checking each step against the schema."""
    node: Any = raw
    spec: Any = TOP
    prefix = ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(spec, Items):
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
            raise UserError(unknown_key(prefix, part, list(spec), OPT_SOURCE))
        name, child_spec = join_key(prefix, part), spec[part]
        if last:
            if isinstance(value, dict) and isinstance(node.get(part), dict):
                _merge_into(node[part], value)
            else:
                node[part] = value
            return
        if isinstance(child_spec, Leaf):
            raise UserError(f"unknown config key '{join_key(name, parts[depth + 1])}' ({OPT_SOURCE}): "
                            f"'{name}' is a value, not a section")
        want = list if isinstance(child_spec, Items) else dict
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
