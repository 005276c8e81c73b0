#!/usr/bin/env python
"""Extract BEATs audio features for every audio or video file of a folder.

    python tools/extract_audio_features.py --checkpoint BEATs_iter3_plus_AS2M.pt --audio DIR --out DIR
        [--format npy|h5] [--device cpu|cuda] [--batch N] [--chunk-seconds S] [--chunk-overlap S]
        [--threads N] [--overwrite] [--no-progress]

Writes ``<out>/<stem>.npy`` (float32, ``(8 * floor(F / 16), 768)``, rows time-major, ~50 rows/s)
per input file, or with ``--format h5`` one ``.h5`` file (``--out x.h5``) holding a dataset per
stem. Reads .wav/.flac/.ogg with soundfile; with ffmpeg on PATH also .mp4/.mkv/.webm/... Existing
outputs are skipped unless --overwrite. Exit status: 0 all files done, 1 some files failed
(listed at the end), 2 a usage error. Details: docs/feature_extraction.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from libs.audio.beats import load_beats  # noqa: E402
from libs.audio.folder import extract_folder  # noqa: E402
from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.common.logs import setup_logging  # noqa: E402

EXIT_SOME_FAILED = 1
logger = logging.getLogger("extract_audio_features")


def _device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("CUDA is not available (--device cuda): expected a CUDA build of torch and a "
                            "visible GPU, or use --device cpu")
        # full fp32 convolutions and matmuls: TF32 would move the features by ~1e-3
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device(name)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="official BEATs checkpoint "
                        "(BEATs_iter3_plus_AS2M.pt): a {'cfg': ..., 'model': ...} dict")
    parser.add_argument("--audio", required=True, help="folder of audio/video files (not recursive)")
    parser.add_argument("--out", required=True, help="output folder (npy) or .h5 file (h5)")
    parser.add_argument("--format", default="npy", choices=("npy", "h5"), help="output format")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs")
    parser.add_argument("--batch", type=int, default=1, help="windows per forward pass (files of "
                        "similar length are grouped; padding is masked)")
    parser.add_argument("--chunk-seconds", type=float, default=60.0, help="split longer audio into "
                        "windows of this length (0: never split)")
    parser.add_argument("--chunk-overlap", type=float, default=10.0, help="seconds shared by "
                        "consecutive windows (split at the midpoint)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--overwrite", action="store_true", help="redo videos whose output exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging()
    if args.batch < 1:
        raise UserError(f"batch size {args.batch} (--batch): expected >= 1")
    if args.threads < 0:
        raise UserError(f"thread count {args.threads} (--threads): expected >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    model = load_beats(args.checkpoint, device)
    start = time.time()
    summary = extract_folder(model, args.audio, args.out, args.format, device, args.batch,
                             args.chunk_seconds, args.chunk_overlap, args.overwrite,
                             progress=not args.no_progress)
    wall = time.time() - start
    speed = f", {summary.seconds / wall:.1f} audio-s/s" if summary.extracted and wall > 0 else ""
    for path, why in summary.failed:
        logger.error("failed: %s: %s", path, why)
    print(f"{summary.line()} in {wall:.1f} s{speed}; output: {args.out}")
    return EXIT_SOME_FAILED if summary.failed else 0


if __name__ == "__main__":
    run_cli(main)
