"""Tiny synthetic Perception Test datasets in the real formats, for tests.

``write_tiny_dataset(root)`` writes an annotation JSON (microsecond timestamps, both localisation
tasks) and one feature folder (or .h5 file) per modality; ``write_tiny_config`` writes a YAML
config using it (model settings left at their defaults unless overridden).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import yaml

DEFAULT_MODALITIES = (
    {"name": "audio", "dim": 8, "rows_per_sec": 10.0, "ext": ".npy", "primary": True},
    {"name": "video", "dim": 6, "rows_per_sec": 3.0, "ext": ".npy"},
)
TASKS = ("sound_localisation", "action_localisation")


def _events(rng: np.random.Generator, duration: float, num_classes: int, n: int) -> List[Dict[str, Any]]:
    out = []
    for j in range(n):
        length = rng.uniform(0.1, 0.4) * duration
        start = rng.uniform(0.0, duration - length)
        lid = int(rng.integers(0, num_classes))
        out.append({"id": j, "label": f"class_{lid}", "label_id": lid,
                    "timestamps": [int(round(start * 1e6)), int(round((start + length) * 1e6))],
                    "frame_ids": [0, 1], "parent_objects": [], "is_visible": True})
    return out


def write_tiny_dataset(root: str, *, splits: Optional[Mapping[str, int]] = None, num_classes: int = 3,
                       modalities: Sequence[Mapping[str, Any]] = DEFAULT_MODALITIES,
                       frame_rate: float = 30.0, num_frames_range: Sequence[int] = (150, 450),
                       events_per_video: Sequence[int] = (1, 3), seed: int = 0,
                       missing: Optional[Mapping[str, Sequence[str]]] = None,
                       name: str = "tiny") -> Dict[str, Any]:
    """Write a tiny dataset under ``root``; return its paths.

    ``splits``: videos per split (default train 4, valid 2, test 1; test videos carry no events).
    ``modalities``: dicts ``name, dim, rows_per_sec, ext (.npy/.pt/.h5), primary``.
    ``missing``: ``{modality name: [video ids]}`` whose feature files are not written.
    Returns ``{"root", "annotation_file", "video_ids": {split: [...]}, "modalities": [config
    modality dicts with path/ext/dim/primary], "paths": {name: folder or .h5}, "num_classes"}``.
    """
    os.makedirs(root, exist_ok=True)
    splits = dict(splits or {"train": 4, "valid": 2, "test": 1})
    missing = {k: set(v) for k, v in (missing or {}).items()}
    rng = np.random.default_rng(seed)
    ann: Dict[str, Any] = {}
    ids: Dict[str, List[str]] = {}
    k = 0
    for split, n in splits.items():
        ids[split] = []
        for _ in range(n):
            vid = f"video_{k:04d}"
            k += 1
            ids[split].append(vid)
            nf = int(rng.integers(num_frames_range[0], num_frames_range[1] + 1))
            entry: Dict[str, Any] = {"metadata": {"video_id": vid, "split": split, "num_frames": nf,
                                                  "frame_rate": frame_rate, "resolution": [64, 64]},
                                     "object_tracking": [], "mc_question": []}
            duration = nf / frame_rate
            for task in TASKS:
                n_ev = 0 if split == "test" else int(rng.integers(events_per_video[0],
                                                                  events_per_video[1] + 1))
                entry[task] = _events(rng, duration, num_classes, n_ev)
            ann[vid] = entry
    ann_path = os.path.join(root, f"{name}_annotations.json")
    with open(ann_path, "w", encoding="utf-8") as f:
        json.dump(ann, f)

    mods_cfg: List[Dict[str, Any]] = []
    paths: Dict[str, str] = {}
    all_ids = [v for vs in ids.values() for v in vs]
    for m in modalities:
        ext = m.get("ext", ".npy")
        arrays = {}
        for vid in all_ids:
            if vid in missing.get(m["name"], set()):
                continue
            duration = ann[vid]["metadata"]["num_frames"] / frame_rate
            t = max(1, int(round(duration * m["rows_per_sec"])))
            arrays[vid] = rng.standard_normal((t, m["dim"])).astype(np.float32)
        if ext == ".h5":
            import h5py
            path = os.path.join(root, f"{m['name']}.h5")
            with h5py.File(path, "w") as f:
                for vid, a in arrays.items():
                    f.create_dataset(vid, data=a)
        else:
            path = os.path.join(root, m["name"])
            os.makedirs(path, exist_ok=True)
            for vid, a in arrays.items():
                if ext == ".npy":
                    np.save(os.path.join(path, vid + ext), a)
                else:
                    torch.save(torch.from_numpy(a), os.path.join(path, vid + ext))
        paths[m["name"]] = path
        entry = {"name": m["name"], "path": path, "ext": ext, "dim": int(m["dim"]),
                 "primary": bool(m.get("primary", False))}
        for key in ("rows_per_step", "resample"):
            if key in m:
                entry[key] = m[key]
        mods_cfg.append(entry)
    return {"root": root, "annotation_file": ann_path, "video_ids": ids, "modalities": mods_cfg,
            "paths": paths, "num_classes": num_classes}


def _merge(dst: Dict[str, Any], src: Mapping[str, Any]) -> None:
    for key, val in src.items():
        if isinstance(val, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], val)
        else:
            dst[key] = copy.deepcopy(val)


def tiny_config_dict(data: Mapping[str, Any], task: str = "sound_localisation",
                     overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A raw (unresolved) config mapping for ``data`` from :func:`write_tiny_dataset`: the
    dataset's classes and modalities, ``max_seq_len`` 96 (the default model's max_div_factor),
    no loader workers; ``overrides`` deep-merged."""
    cfg: Dict[str, Any] = {
        "task": task,
        "seed": 0,
        "dataset": {"annotation_file": data["annotation_file"], "num_classes": data["num_classes"],
                    "modalities": copy.deepcopy(data["modalities"]), "max_seq_len": 96,
                    "train_split": ["train"], "val_split": ["valid"]},
        "loader": {"batch_size": 2, "eval_batch_size": 2, "num_workers": 0},
    }
    _merge(cfg, overrides or {})
    return cfg


def write_tiny_config(path: str, data: Mapping[str, Any], task: str = "sound_localisation",
                      overrides: Optional[Mapping[str, Any]] = None) -> str:
    """Write :func:`tiny_config_dict` as YAML to ``path``; return ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(tiny_config_dict(data, task, overrides), f, sort_keys=False)
    return str(path)


def write_challenge_task_files(annotation_file: str, out_dir: str,
                               tasks: Sequence[str] = TASKS) -> Dict[str, Dict[str, str]]:
    """Split a both-lists annotation file (e.g. :func:`write_tiny_dataset`'s) into the challenge
    layout: ``challenge_<task>_<split>.json`` per task and split, each video with its metadata and
    that task's list only (other keys dropped). Returns ``{task: {split: path}}``."""
    with open(annotation_file, encoding="utf-8") as f:
        ann = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    out: Dict[str, Dict[str, str]] = {}
    for task in tasks:
        by_split: Dict[str, Dict[str, Any]] = {}
        for vid, entry in ann.items():
            one = {"metadata": copy.deepcopy(entry["metadata"])}
            if task in entry:
                one[task] = copy.deepcopy(entry[task])
            by_split.setdefault(entry["metadata"]["split"], {})[vid] = one
        out[task] = {}
        for split, videos in by_split.items():
            path = os.path.join(out_dir, f"challenge_{task}_{split}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(videos, f)
            out[task][split] = path
    return out
