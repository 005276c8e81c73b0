"""Data and configs of ``benchmarks/compare_reference.py``: one synthetic Perception-Test-format
dataset, written in our layout and in the layout the reference (PyPI ``actionformer==1.5.0``) reads.

- Ours: ``tools/make_demo_data.py`` output (Perception Test annotation JSON, BEATs-like ``.npy``
  and UMT-like ``.pt`` features) and per-size annotation files holding the first N training
  videos plus the validation videos.
- The reference: its ``anet`` dataset class (``force_upsampling`` + ``feat_stride``, the arithmetic
  of the original TSL ``perception`` dataset) reads one ``.npy`` per video and an ActivityNet-style
  ``{"database": {vid: {subset, duration, annotations: [{segment, label, label_id}]}}}`` JSON. The
  ``.npy`` holds what the original's ``perception`` dataset assembled on the fly: BEATs rows, then
  the UMT rows endpoint-resampled to them (its ``interp1d``; our ``resample_rows``), 1792 columns.
  ``duration`` is ``num_frames / frame_rate`` on both sides (the original's product bug,
  docs/differences.md s.1.1, would only switch off end clipping on its side).
- Configs: the original TSL config (``tests/data/original_configs/perception_tsl_multi_train.yaml``:
  width 512, batch 16, 192 cells) in the original layout, which both sides read; only the
  ``dataset`` section differs (``perception`` for ours, ``anet`` for the reference).
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from libs.datasets.perception import resample_rows  # noqa: E402
from tools.make_demo_data import generate_demo_data  # noqa: E402

ORIGINAL_TSL = REPO / "tests" / "data" / "original_configs" / "perception_tsl_multi_train.yaml"
REF_VERSION = 1          # bump when the reference layout written here changes


def _load_pt(path: Path) -> np.ndarray:
    import torch
    return torch.load(path, map_location="cpu", weights_only=True).numpy()


def make_dataset(root: Path, *, num_train: int, num_valid: int, seed: int, min_duration: float,
                 max_duration: float, log=print) -> Dict[str, Any]:
    """Write (or reuse) the dataset under ``root``; returns paths and the ordered video ids."""
    pt = root / "pt"
    info = generate_demo_data(pt, seed=seed, num_train=num_train, num_valid=num_valid, num_test=0,
                              min_duration=min_duration, max_duration=max_duration, overwrite=True)
    if not info["up_to_date"]:
        log(f"  wrote {info['num_videos']} videos ({info['bytes'] / 2**30:.2f} GiB) in "
            f"{info['seconds']:.0f} s: {pt}")
    ann = json.loads((pt / "annotations.json").read_text())
    ids = {s: [v for v, e in ann.items() if e["metadata"]["split"] == s] for s in ("train", "valid")}
    concat = root / "ref_features"
    stamp = root / "ref_features.json"
    want = {"version": REF_VERSION, "content_hash": info["content_hash"]}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        concat.mkdir(parents=True, exist_ok=True)
        for vid in ann:
            beats = np.load(pt / "features" / "beats" / f"{vid}.npy")               # (N_a, 768)
            umt = _load_pt(pt / "features" / "umt" / f"{vid}.pt")                  # (T_v, 1024)
            both = np.concatenate([beats, resample_rows(umt, beats.shape[0], "endpoint")], axis=1)
            np.save(concat / f"{vid}.npy", both.astype(np.float32))
        stamp.write_text(json.dumps(want))
        log(f"  wrote the reference's features ({len(ann)} videos, 1792 columns): {concat}")
    return {"root": root, "pt": pt, "ann": ann, "ids": ids, "ref_features": concat}


def replicate(data: Dict[str, Any], num_train: int, log=print) -> Dict[str, Any]:
    """``data`` with ``num_train`` training videos when it holds fewer distinct ones: video
    ``k`` beyond them is ``<id>_r<k>``, a copy of training video ``k mod n`` whose feature files
    (both layouts) are hard links to the original's (no disk space; every process still reads
    and holds its own copy, so memory behaves as with distinct videos). ``data`` itself when it
    has enough videos. Written once per size under ``<root>/replica_<num_train>/``."""
    train = data["ids"]["train"]
    if num_train <= len(train):
        return data
    root = data["root"] / f"replica_{num_train}"
    pt = root / "pt"
    extra = [(f"{train[k % len(train)]}_r{k}", train[k % len(train)])
             for k in range(len(train), num_train)]
    pairs = [(v, v) for v in train + data["ids"]["valid"]] + extra
    stamp = root / "done.json"
    want = {"num_train": num_train, "base": str(data["pt"]), "count": len(pairs)}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        for sub, folder, ext in (("beats", data["pt"] / "features" / "beats", ".npy"),
                                 ("umt", data["pt"] / "features" / "umt", ".pt"),
                                 ("ref", data["ref_features"], ".npy")):
            dest = pt / "features" / sub if sub != "ref" else root / "ref_features"
            dest.mkdir(parents=True, exist_ok=True)
            for new, old in pairs:
                target = dest / f"{new}{ext}"
                if not target.exists():
                    os.link(folder / f"{old}{ext}", target)
        stamp.write_text(json.dumps(want))
        log(f"  {num_train} training videos: {len(extra)} hard-linked copies of the "
            f"{len(train)} distinct ones: {root}")
    ann = dict(data["ann"])
    for new, old in extra:
        entry = copy.deepcopy(ann[old])
        entry["metadata"]["video_id"] = new
        ann[new] = entry
    ids = {"train": train + [new for new, _ in extra], "valid": data["ids"]["valid"]}
    return {"root": root, "pt": pt, "ann": ann, "ids": ids, "ref_features": root / "ref_features"}


def annotation_files(data: Dict[str, Any], num_train: int) -> Dict[str, Path]:
    """Our annotation file and the reference's JSON for the first ``num_train`` training videos
    plus every validation video (rewritten whenever the dataset under them changed: the
    validation ids depend on the dataset's size)."""
    ann, root = data["ann"], data["root"]
    keep = data["ids"]["train"][:num_train] + data["ids"]["valid"]
    ours, ref = root / f"annotations_{num_train}.json", root / f"anet_{num_train}.json"
    db = {}
    for vid in keep:
        meta = ann[vid]["metadata"]
        db[vid] = {"subset": meta["split"], "duration": meta["num_frames"] / meta["frame_rate"],
                   "annotations": [{"segment": [e["timestamps"][0] / 1e6, e["timestamps"][1] / 1e6],
                                    "label": e["label"], "label_id": e["label_id"]}
                                   for e in ann[vid]["sound_localisation"]]}
    for path, text in ((ours, json.dumps({v: ann[v] for v in keep})),
                       (ref, json.dumps({"version": "synthetic", "database": db}))):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return {"ours": ours, "ref": ref}


def original_config(width: int, seed: int, out: Path) -> Dict[str, Any]:
    """The original TSL config at ``width`` (embd/fpn/head dims), seed ``seed``, outputs in ``out``."""
    cfg = yaml.safe_load(ORIGINAL_TSL.read_text())
    cfg["model"].update(embd_dim=width, fpn_dim=width, head_dim=width)
    cfg["init_rand_seed"] = int(seed)
    cfg["output_folder"] = str(out)
    return cfg


def write_configs(data: Dict[str, Any], run_dir: Path, *, num_train: int, width: int, seed: int,
                  opt: Optional[Dict[str, Any]] = None, name: str = "tsl") -> Dict[str, Path]:
    """One original-layout YAML per side (same model, optimiser, test settings; own dataset)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = replicate(data, num_train)
    files = annotation_files(data, num_train)
    base = original_config(width, seed, run_dir)
    for k, v in (opt or {}).items():
        base["opt"][k] = v
    ours = copy.deepcopy(base)
    ours["dataset"].update(json_file=str(files["ours"]),
                           feat_folder=str(data["pt"] / "features" / "beats"),
                           mm_feat_folder=str(data["pt"] / "features" / "umt"))
    ref = copy.deepcopy(base)
    ref["dataset_name"] = "anet"
    for k in ("input_modality", "mm_feat_folder", "task"):
        ref["dataset"].pop(k)
    ref["dataset"].update(json_file=str(files["ref"]), feat_folder=str(data["ref_features"]),
                          file_prefix=None, file_ext=".npy")
    paths = {"ours": run_dir / f"{name}_ours.yaml", "ref": run_dir / f"{name}_ref.yaml"}
    for side, cfg in (("ours", ours), ("ref", ref)):
        paths[side].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def metric_case(data: Dict[str, Any], num_preds: int, seed: int, out: Path) -> Path:
    """``num_preds`` predictions on the validation videos (jittered copies of their events, 80%
    with the event's class, plus random false positives), saved as ``.npz`` columns."""
    rng = np.random.default_rng(seed)
    vids, starts, ends, labels = [], [], [], []
    for vid in data["ids"]["valid"]:
        for e in data["ann"][vid]["sound_localisation"]:
            vids.append(vid)
            starts.append(e["timestamps"][0] / 1e6)
            ends.append(e["timestamps"][1] / 1e6)
            labels.append(e["label_id"])
    vids_a, starts_a, ends_a, labels_a = map(np.asarray, (vids, starts, ends, labels))
    src = rng.integers(len(vids_a), size=num_preds)
    start = starts_a[src] + rng.normal(0, 0.5, num_preds)
    end = np.maximum(start + 0.05, ends_a[src] + rng.normal(0, 0.5, num_preds))
    lab = np.where(rng.random(num_preds) < 0.8, labels_a[src], rng.integers(12, size=num_preds))
    np.savez(out, video_ids=vids_a[src].astype(str), t_start=np.maximum(start, 0.0), t_end=end,
             labels=lab.astype(np.int64), scores=rng.random(num_preds))
    return out


def ref_checkpoint(ours_ckpt: Path, out: Path) -> Path:
    """Our checkpoint's weights in the reference's layout (``module.`` + our names, which are the
    original's): ``state_dict`` = raw weights, ``state_dict_ema`` = EMA weights."""
    import torch
    ck = torch.load(ours_ckpt, map_location="cpu", weights_only=False)
    torch.save({"epoch": ck["epoch"],
                "state_dict": {f"module.{k}": v for k, v in ck["state_dict"].items()},
                "state_dict_ema": {f"module.{k}": v for k, v in ck["state_dict_ema"].items()}}, out)
    return out

