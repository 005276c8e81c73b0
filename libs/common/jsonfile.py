"""Reading a user's JSON file: UTF-8 only, one-line errors, and every key written twice in one
object found (:func:`read_json_checked`; :func:`read_json` when repeated keys do not matter).

``json.load`` keeps the last of two equal keys without a word (a video id twice in an annotation
file: the first copy's events vanish). :func:`read_json_checked` parses with an
``object_pairs_hook`` that records such keys, and turns every way the file can fail to decode
(missing, not UTF-8, empty, malformed, nested too deeply) into one :class:`UserError` line naming
``what`` and the file.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

from libs.common.errors import UserError

PathKey = Union[str, int]


@dataclass(frozen=True)
class DuplicateKey:
    """A key written ``count`` times in one object; ``where`` are the keys (and list indices)
    from the top level down to that object (``()``: the top-level object itself)."""
    key: str
    count: int
    where: Tuple[PathKey, ...]


class _DuplicateRecorder:
    """``object_pairs_hook`` that builds dicts (last value wins, as json does) and remembers the
    objects with a repeated key."""

    def __init__(self) -> None:
        self.found: List[Tuple[Dict[str, Any], List[Tuple[str, int]]]] = []

    def __call__(self, pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            counts = Counter(k for k, _ in pairs)
            self.found.append((obj, [(k, n) for k, n in counts.items() if n > 1]))
        return obj


def _locate(data: Any, targets: Dict[int, None]) -> Dict[int, Tuple[PathKey, ...]]:
    """Where each object of ``targets`` (by ``id``) sits in ``data`` (an explicit-stack walk;
    only run when a duplicate was found)."""
    out: Dict[int, Tuple[PathKey, ...]] = {}
    stack: List[Tuple[Any, Tuple[PathKey, ...]]] = [(data, ())]
    while stack and len(out) < len(targets):
        node, where = stack.pop()
        if id(node) in targets:
            out[id(node)] = where
        if isinstance(node, dict):
            stack.extend((v, where + (k,)) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, where + (i,)) for i, v in enumerate(node) if isinstance(v, (dict, list)))
    return out


def decode_utf8(raw: bytes, what: str, path: str) -> str:
    """``raw`` as UTF-8 text (a leading BOM dropped); otherwise a UserError naming the first bad
    byte, its line and offset."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise UserError(f"{what} is not UTF-8 text ({path}): byte 0x{raw[err.start]:02x} at line "
                        f"{line} (offset {err.start}) cannot be decoded; expected a UTF-8 JSON "
                        f"file") from None


def read_json_checked(path: str | os.PathLike, what: str, expected: str
                      ) -> Tuple[Any, List[DuplicateKey]]:
    """Parse the JSON file at ``path``; returns the data and every duplicate key found.

    Missing, unreadable, non-UTF-8, empty, malformed or too deeply nested files are one
    :class:`UserError` naming ``what`` (e.g. 'annotation file'), the file and ``expected``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} not found ({path}): expected {expected}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise UserError(f"cannot read {what} ({path}): {err.strerror}") from None
    text = decode_utf8(raw, what, path)
    if not text.strip():
        raise UserError(f"{what} is empty ({path}): expected {expected}")
    recorder = _DuplicateRecorder()
    try:
        data = json.loads(text, object_pairs_hook=recorder)
    except json.JSONDecodeError as err:
        raise UserError(f"{what} is not valid JSON ({path}): {err.msg} at line {err.lineno} "
                        f"column {err.colno}") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply to parse ({path}): expected "
                        f"{expected}") from None
    if not recorder.found:
        return data, []
    where = _locate(data, {id(obj): None for obj, _ in recorder.found})
    # An object that is not reachable sat inside a value that a later duplicate replaced: that
    # outer duplicate is reported already.
    dups = [DuplicateKey(k, n, where[id(obj)]) for obj, keys in recorder.found
            if id(obj) in where for k, n in keys]
    return data, dups


def describe_where(where: Tuple[PathKey, ...]) -> str:
    """``('v1', 'sound_localisation', 0)`` -> ``v1.sound_localisation[0]``."""
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def read_json(path: str | os.PathLike, what: str, expected: str) -> Any:
    """:func:`read_json_checked` for files where a repeated key is harmless (the last one wins,
    as ``json.load`` does): external scores, raw-candidate meta."""
    return read_json_checked(path, what, expected)[0]
