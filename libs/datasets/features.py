"""Per-modality feature files: ``<folder>/<video_id>.npy|.pt`` or one ``.h5`` (docs/numerics.md s.1.2).

:class:`FeatureSource` reads one video's ``(T, dim)`` float32 array and checks files cheaply
(headers and shapes only) so that every problem of a split is found before training starts.
The ``.h5`` handle is opened lazily in the process that uses it (safe for DataLoader workers).
"""
from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from libs.common.errors import UserError

logger = logging.getLogger(__name__)

EXTS = (".npy", ".pt", ".h5")


class FeatureProblem(UserError):
    """A problem with one video's feature file. ``kind``: 'missing', 'unreadable' or 'shape'."""

    def __init__(self, message: str, kind: str, video_id: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.video_id = video_id


def resolve_ext(path: str, ext: Optional[str]) -> str:
    """The modality's extension; null means ``.h5`` if ``path`` ends in .h5, else ``.npy``."""
    if ext is None:
        return ".h5" if str(path).lower().endswith(".h5") else ".npy"
    if ext not in EXTS:
        raise UserError(f"unknown feature extension {ext!r} (dataset.modalities, path {path}): "
                        f"expected one of {', '.join(EXTS)}")
    return ext


def load_array(fname: str, ext: str) -> np.ndarray:
    """Read one ``.npy`` / ``.pt`` (tensor) file as float32; raises the loader's exception."""
    if ext == ".npy":
        return np.asarray(np.load(fname, allow_pickle=False), dtype=np.float32)
    if ext == ".pt":
        obj = torch.load(fname, map_location="cpu", weights_only=True)
        if not isinstance(obj, torch.Tensor):
            raise TypeError(f"holds a {type(obj).__name__}, expected a tensor")
        return obj.detach().to(torch.float32).numpy()
    raise ValueError(f"cannot read {ext} files one by one")


def npy_shape(fname: str) -> Tuple[int, ...]:
    """The array shape in a ``.npy`` file's header (only the header is read; format versions
    1 and 2 parsed directly, others through a memory map)."""
    with open(fname, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return tuple(np.lib.format.read_array_header_1_0(f)[0])
        if version == (2, 0):
            return tuple(np.lib.format.read_array_header_2_0(f)[0])
    return tuple(np.load(fname, mmap_mode="r", allow_pickle=False).shape)


class _TensorShapeUnpickler(pickle.Unpickler):
    """Reads the shape of a tensor saved alone by ``torch.save`` from its ``data.pkl`` record
    without building the tensor: ``_rebuild_tensor_v2(storage, offset, size, ...)`` gives
    ``size``; storages are not loaded. Anything else in the pickle is refused (the caller then
    falls back to ``torch.load``), so only the plain-tensor layout takes this path."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _shape_of_rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"not a plain tensor record: {module}.{name}")

    def persistent_load(self, pid: Any) -> None:
        return None


def _shape_of_rebuild(storage: Any, offset: int, size: Sequence[int], *rest: Any) -> "_Shape":
    return _Shape(int(n) for n in size)


class _Shape(tuple):
    """A shape found by :class:`_TensorShapeUnpickler` (tells it apart from other results)."""


_ZIP_LOCAL = struct.Struct("<IHHHHHIIIHH")    # a zip local file header (30 bytes)
# what reading a record that is not one plain tensor can raise (then the next way is tried)
_RECORD_ERRORS = (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                  IndexError, KeyError)


def _record_shape(stream: Any) -> Optional[Tuple[int, ...]]:
    """The shape a ``data.pkl`` pickle stream rebuilds, or None if it is not one plain tensor."""
    shape = _TensorShapeUnpickler(stream).load()
    return tuple(shape) if isinstance(shape, _Shape) else None


def pt_shape(fname: str) -> Tuple[int, ...]:
    """The shape of the tensor in a ``.pt`` file, read from its pickle record alone when the
    file holds one plain tensor: first from the zip's first entry if that is the stored
    ``<archive>/data.pkl`` (``torch.save`` writes it first: one 4 KiB read), else through the zip
    index; anything else (legacy format, a dict, a parameter...) through ``torch.load``, which
    raises its own error, or returns a non-tensor (TypeError)."""
    try:
        with open(fname, "rb") as f:
            head = f.read(4096)
        sig, _, _, method, _, _, _, _, _, name_len, extra_len = _ZIP_LOCAL.unpack_from(head)
        name = head[_ZIP_LOCAL.size:_ZIP_LOCAL.size + name_len]
        if sig == 0x04034B50 and method == 0 and name.endswith(b"/data.pkl") and name.count(b"/") == 1:
            shape = _record_shape(io.BytesIO(head[_ZIP_LOCAL.size + name_len + extra_len:]))
            if shape is not None:
                return shape
    except (struct.error, *_RECORD_ERRORS):
        pass                              # not the usual layout: the zip index decides
    try:
        with zipfile.ZipFile(fname) as archive:
            records = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(records) == 1:
                with archive.open(records[0]) as f:
                    shape = _record_shape(f)
                if shape is not None:
                    return shape
    except (zipfile.BadZipFile, *_RECORD_ERRORS):
        pass                              # legacy format, a dict, a parameter...: torch decides
    try:
        obj = torch.load(fname, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
        obj = torch.load(fname, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"holds a {type(obj).__name__}, expected a tensor")
    return tuple(obj.shape)


def nonfinite_rows(x: np.ndarray) -> int:
    """Rows of ``x (T, C)`` holding at least one NaN or inf (0 for a finite array, one pass)."""
    if np.isfinite(x).all():
        return 0
    return int((~np.isfinite(x)).any(axis=1).sum())


@dataclass
class FeatureSource:
    """One feature family. ``path`` is a folder of ``<video_id><ext>`` files or one ``.h5`` file."""
    name: str
    path: str
    ext: Optional[str]
    dim: int

    def __post_init__(self) -> None:
        self.path = str(self.path)
        self.ext = resolve_ext(self.path, self.ext)
        self._h5: Any = None
        self._h5_pid: Optional[int] = None
        self._shapes: Dict[str, Tuple[int, ...]] = {}   # header reads of this build (check, shape)

    # -- pickling: never carry an open h5 handle into another process ---------------------------
    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_h5_pid"] = None
        return state

    def close(self) -> None:
        """Close the h5 handle of this process (reopened lazily on the next read)."""
        if self._h5 is not None and self._h5_pid == os.getpid():
            try:
                self._h5.close()
            except Exception:  # pragma: no cover - closing a dead handle
                pass
        self._h5, self._h5_pid = None, None

    def file_for(self, video_id: str) -> str:
        """The file holding ``video_id`` (the .h5 file itself for h5 sources)."""
        if self.ext == ".h5":
            return self.path
        return os.path.join(self.path, f"{video_id}{self.ext}")

    def where(self, video_id: str) -> str:
        """``modality 'NAME', video 'ID'``, for messages."""
        return f"modality '{self.name}', video '{video_id}'"

    _where = where

    def _h5_file(self, video_id: str) -> Any:
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py
            if not os.path.isfile(self.path):
                raise FeatureProblem(f"feature file not found (modality '{self.name}'): {self.path}",
                                     "missing", video_id)
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as err:
                raise FeatureProblem(f"unreadable h5 feature file (modality '{self.name}'): {self.path}: "
                                     f"{err}", "unreadable", video_id) from None
            self._h5_pid = os.getpid()
        return self._h5

    def _missing(self, video_id: str) -> FeatureProblem:
        return FeatureProblem(f"missing feature file ({self._where(video_id)}): "
                              f"{self.file_for(video_id)}", "missing", video_id)

    def _unreadable(self, video_id: str, err: BaseException) -> FeatureProblem:
        detail = " ".join(str(err).split())[:160]
        return FeatureProblem(f"unreadable feature file ({self._where(video_id)}): "
                              f"{self.file_for(video_id)}: {type(err).__name__}: {detail}",
                              "unreadable", video_id)

    def _check_shape(self, video_id: str, shape: Tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[1] != self.dim or shape[0] == 0:
            raise FeatureProblem(f"bad feature shape ({self._where(video_id)}): {self.file_for(video_id)} "
                                 f"has shape {tuple(shape)}, expected (T >= 1, {self.dim})", "shape",
                                 video_id)

    def _h5_entry(self, video_id: str):
        """The h5 object stored under ``video_id``; a missing one is a FeatureProblem."""
        f = self._h5_file(video_id)
        if video_id not in f:
            raise FeatureProblem(f"missing feature dataset ({self._where(video_id)}): no '{video_id}' "
                                 f"in {self.path}", "missing", video_id)
        return f[video_id]

    def shape(self, video_id: str) -> Tuple[int, ...]:
        """The stored array shape, read cheaply (header / zip index / h5 metadata) once per
        source object; raises FeatureProblem."""
        shape = self._shapes.get(video_id)
        if shape is None:
            shape = self._shapes[video_id] = self._read_shape(video_id)
        return shape

    def _read_shape(self, video_id: str) -> Tuple[int, ...]:
        if self.ext == ".h5":
            entry = self._h5_entry(video_id)
            try:
                return tuple(entry.shape)
            except Exception as err:  # a group instead of a dataset, corrupt metadata
                raise self._unreadable(video_id, err) from None
        fname = self.file_for(video_id)
        if not os.path.isfile(fname):
            raise self._missing(video_id)
        try:
            return npy_shape(fname) if self.ext == ".npy" else pt_shape(fname)
        except Exception as err:
            raise self._unreadable(video_id, err) from None

    def check(self, video_ids: Iterable[str]) -> List[FeatureProblem]:
        """Every problem (missing, unreadable, wrong shape) of these videos, cheaply."""
        found: List[FeatureProblem] = []
        for vid in video_ids:
            try:
                self._check_shape(vid, self.shape(vid))
            except FeatureProblem as prob:
                found.append(prob)
        return found

    def problems(self, video_ids: Iterable[str]) -> List[str]:
        """Messages of :meth:`check` (one per video; an absent .h5 file gives one message)."""
        return list(dict.fromkeys(str(p) for p in self.check(video_ids)))

    def read(self, video_id: str) -> np.ndarray:
        """The ``(T, dim)`` float32 features of ``video_id``; raises FeatureProblem."""
        if self.ext == ".h5":
            entry = self._h5_entry(video_id)
            try:
                arr = np.asarray(entry[()], dtype=np.float32)
            except Exception as err:
                raise self._unreadable(video_id, err) from None
        else:
            fname = self.file_for(video_id)
            if not os.path.isfile(fname):
                raise self._missing(video_id)
            try:
                arr = load_array(fname, self.ext)
            except Exception as err:
                raise self._unreadable(video_id, err) from None
        self._check_shape(video_id, arr.shape)
        return np.ascontiguousarray(arr)  # (T, dim) float32
