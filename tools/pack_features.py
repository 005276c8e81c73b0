#!/usr/bin/env python
"""Pack a folder of ``<video_id><ext>`` feature files into one ``.h5`` (a float32 dataset per video).

    python tools/pack_features.py FOLDER OUT.h5 [--ext .npy|.pt] [--overwrite]

The output is written to a temporary file and renamed at the end, so a failed run never leaves a
partial file over an existing one. Use the .h5 as a modality ``path`` (``ext: .h5``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from libs.common.errors import UserError, format_problems, run_cli  # noqa: E402
from libs.datasets.features import load_array  # noqa: E402
from libs.common.io import atomic_path  # noqa: E402


def pack_folder(folder: str, out: str, ext: str = ".npy", overwrite: bool = False,
                progress: bool = True) -> int:
    """Pack every ``<video_id><ext>`` of ``folder`` into ``out``; returns the number of videos."""
    import h5py

    if not os.path.isdir(folder):
        raise UserError(f"feature folder not found ({folder}): expected a folder of <video_id>{ext} files")
    if os.path.exists(out) and not overwrite:
        raise UserError(f"output file exists ({out}): pass --overwrite to replace it")
    names = sorted(n for n in os.listdir(folder) if n.endswith(ext) and len(n) > len(ext))
    if not names:
        raise UserError(f"no {ext} files in the feature folder ({folder}): expected <video_id>{ext} files")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise UserError(f"output folder not found ({out_dir}): create it first")
    problems: List[str] = []
    dim: Optional[int] = None
    with atomic_path(out, "packed features") as tmp:
        with h5py.File(tmp, "w") as h5:
            for name in tqdm(names, desc=f"packing {folder}", unit="file", disable=not progress):
                vid = name[: -len(ext)]
                path = os.path.join(folder, name)
                try:
                    arr = load_array(path, ext)                                  # (T, C)
                except Exception as err:
                    detail = " ".join(str(err).split())[:120]
                    problems.append(f"unreadable {path}: {type(err).__name__}: {detail}")
                    continue
                if arr.ndim != 2 or arr.shape[0] == 0:
                    problems.append(f"{path} has shape {tuple(arr.shape)}, expected (T >= 1, C)")
                    continue
                if dim is None:
                    dim = int(arr.shape[1])
                elif arr.shape[1] != dim:
                    problems.append(f"{path} has {arr.shape[1]} channels, expected {dim} like the others")
                    continue
                h5.create_dataset(vid, data=np.ascontiguousarray(arr, dtype=np.float32))
        if problems:
            raise UserError(format_problems(problems, f"cannot pack {len(problems)} file(s) ({folder})"))
    return len(names)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder of <video_id><ext> files")
    parser.add_argument("out", help="output .h5 file")
    parser.add_argument("--ext", default=".npy", choices=(".npy", ".pt"), help="input file extension")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    n = pack_folder(args.folder, args.out, args.ext, args.overwrite)
    print(f"packed {n} videos from {args.folder} into {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
