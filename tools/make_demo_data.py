#!/usr/bin/env python
"""Generate the bundled synthetic demo dataset, in the real Perception Test formats (docs/numerics.md s.1).

    python tools/make_demo_data.py [--out data/demo] [--seed 0] [--overwrite]
        [--num-train 64 --num-valid 24 --num-test 16] [--min-duration 8 --max-duration 16]

Writes under ``--out``:
    annotations.json            Perception Test JSON: {video_id: {metadata, action_localisation,
                                sound_localisation, mc_question}}, timestamps in microseconds
    features/beats/<vid>.npy    float32 (N_a, 768), N_a = 8*floor((100*D - 2)/16): BEATs layout,
                                8 frequency tokens per 160 ms time patch, flattened time-major
    features/umt/<vid>.pt       torch float32 (T_v, 1024), T_v = max(1, floor(7.5*D)) (UMT-like)
    features/videomae/<vid>.pt  torch float32 (T_v, 1024) (VideoMAE-like)
    demo_meta.json              generator version, arguments and a content hash: a rerun with the
                                same arguments prints 'demo data up to date' and exits 0

The output is a pure function of the arguments (same seed -> byte-identical files).

The signal (how classes are encoded, confusable pairs, overlaps) is built by
``tools/demo_signal.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

if __package__ in (None, ""):  # run as a script: make `libs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.errors import UserError, run_cli  # noqa: E402
from tools.demo_signal import (GENERATOR_VERSION, PARAMS, SPLITS, SignalParams,  # noqa: E402
                               make_prototypes, make_video)

DEFAULT_OUT = "data/demo"
META_FILE = "demo_meta.json"
ANNOTATION_FILE = "annotations.json"
FEATURE_DIRS = {"beats": ".npy", "umt": ".pt", "videomae": ".pt"}
OWNED = (ANNOTATION_FILE, META_FILE, "features")


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def _save_pt(array: np.ndarray, path: Path) -> None:
    import torch  # lazy: the up-to-date check does not need torch

    torch.save(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).clone(), path)


def _content_hash(root: Path) -> str:
    """sha256 over the relative paths and bytes of annotations.json and every feature file."""
    h = hashlib.sha256()
    files = [root / ANNOTATION_FILE]
    for family in FEATURE_DIRS:
        folder = root / "features" / family
        files += sorted(folder.iterdir()) if folder.is_dir() else []
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _is_up_to_date(out: Path, args: Dict[str, Any]) -> bool:
    try:
        meta = json.loads((out / META_FILE).read_text())
        if meta.get("generator_version") != GENERATOR_VERSION or meta.get("args") != args:
            return False
        return meta.get("content_hash") == _content_hash(out)
    except (OSError, ValueError):
        return False


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def generate_demo_data(out_dir: os.PathLike | str = DEFAULT_OUT, seed: int = 0, num_train: int = 64,
                       num_valid: int = 24, num_test: int = 16, min_duration: float = 8.0,
                       max_duration: float = 16.0, overwrite: bool = False,
                       params: SignalParams = PARAMS) -> Dict[str, Any]:
    """Write the demo dataset under ``out_dir`` (see the module docstring); returns a summary dict
    (``out``, ``up_to_date``, ``num_videos``, ``splits``, ``bytes``, ``seconds``, ``content_hash``).

    An existing dataset generated with the same arguments is reused (``up_to_date`` True);
    any other existing demo files are replaced only with ``overwrite``, else UserError.
    """
    tic = time.perf_counter()
    out = Path(out_dir)
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    if min(counts.values()) < 0 or num_train + num_valid + num_test < 1:
        raise UserError(f"bad video counts (train {num_train}, valid {num_valid}, "
                        f"test {num_test}): expected non-negative counts, at least one video")
    if not 1.0 <= min_duration <= max_duration:
        raise UserError(f"bad durations (min {min_duration}, max {max_duration}): expected "
                        "1 <= min-duration <= max-duration (seconds)")
    args = {"seed": seed, "num_train": num_train, "num_valid": num_valid, "num_test": num_test,
            "min_duration": float(min_duration), "max_duration": float(max_duration),
            "params": json.loads(json.dumps(asdict(params)))}
    if out.exists() and not out.is_dir():
        raise UserError(f"output is not a folder ({out}): expected a folder for the demo data")
    existing = [name for name in OWNED if (out / name).exists()]
    if existing and _is_up_to_date(out, args):
        return {"out": str(out), "up_to_date": True, "num_videos": sum(counts.values()),
                "splits": counts, "bytes": _dir_size(out),
                "seconds": time.perf_counter() - tic,
                "content_hash": json.loads((out / META_FILE).read_text())["content_hash"]}
    if existing and not overwrite:
        raise UserError(f"demo data already exists and differs from the requested arguments or is "
                        f"incomplete ({out}): pass --overwrite to replace it")

    # generate into a private folder, then move into place (no partial output over an old one)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for family in FEATURE_DIRS:
            (tmp / "features" / family).mkdir(parents=True)
        protos = make_prototypes(seed, params)
        annotations: Dict[str, Any] = {}
        index = 0
        first_test = True
        for split in SPLITS:
            for _ in range(counts[split]):
                vid, entry, feats = make_video(seed, index, split, min_duration, max_duration,
                                               protos, params)
                index += 1
                if split == "test":  # unlabelled: empty task lists; the first one has none at all
                    if first_test:
                        del entry["action_localisation"], entry["sound_localisation"]
                        first_test = False
                    else:
                        entry["action_localisation"], entry["sound_localisation"] = [], []
                annotations[vid] = entry
                np.save(tmp / "features" / "beats" / f"{vid}.npy", feats["beats"])
                _save_pt(feats["umt"], tmp / "features" / "umt" / f"{vid}.pt")
                _save_pt(feats["videomae"], tmp / "features" / "videomae" / f"{vid}.pt")
        (tmp / ANNOTATION_FILE).write_text(json.dumps(annotations, indent=1) + "\n")
        digest = _content_hash(tmp)
        meta = {"generator_version": GENERATOR_VERSION, "args": args, "content_hash": digest}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

        (out / META_FILE).unlink(missing_ok=True)  # invalid until everything is in place
        for family in FEATURE_DIRS:
            dest = out / "features" / family
            if dest.exists():
                shutil.rmtree(dest)
        (out / "features").mkdir(exist_ok=True)
        for family in FEATURE_DIRS:
            os.replace(tmp / "features" / family, out / "features" / family)
        os.replace(tmp / ANNOTATION_FILE, out / ANNOTATION_FILE)
        os.replace(tmp / META_FILE, out / META_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "up_to_date": False, "num_videos": index, "splits": counts,
            "bytes": _dir_size(out), "seconds": time.perf_counter() - tic, "content_hash": digest}


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing demo files")
    parser.add_argument("--num-train", type=int, default=64, help="training videos (64)")
    parser.add_argument("--num-valid", type=int, default=24, help="validation videos (24)")
    parser.add_argument("--num-test", type=int, default=16, help="unlabelled test videos (16)")
    parser.add_argument("--min-duration", type=float, default=8.0, help="seconds (8)")
    parser.add_argument("--max-duration", type=float, default=16.0, help="seconds (16)")
    a = parser.parse_args(argv)
    res = generate_demo_data(a.out, seed=a.seed, num_train=a.num_train, num_valid=a.num_valid,
                             num_test=a.num_test, min_duration=a.min_duration,
                             max_duration=a.max_duration, overwrite=a.overwrite)
    if res["up_to_date"]:
        print(f"demo data up to date ({res['out']})")
    else:
        s = res["splits"]
        print(f"demo data written to {res['out']}: {res['num_videos']} videos (train {s['train']}, "
              f"valid {s['valid']}, test {s['test']}), {res['bytes'] / 2**20:.1f} MiB, "
              f"{res['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
