"""BEATs feature-extraction speed (audio seconds per second) and the chunked-vs-unchunked difference.

    python benchmarks/bench_extract.py [--device cpu|cuda] [--threads 2] [--runs 5] [--seconds 30]
        [--batch 1] [--long-seconds 60] [--chunks 10:2,20:4,30:5] [--json FILE]

The full-size iter3+ AS2M architecture with random weights in the official checkpoint layout
(the numbers of operations are those of the release; weights do not change the speed). Timed:
fbank + normalisation + encoder on ``--batch`` clips of ``--seconds`` seconds of synthetic
audio (tones + noise), after one warm-up pass; reported as the median (min..max) over
``--runs`` passes. Decoding and file I/O are not included.

Then one ``--long-seconds`` clip is extracted unchunked and with each ``chunk:overlap``
setting (seconds) of ``--chunks``; the table gives the max and mean absolute difference of the
features, the largest difference relative to the features' std, and the lowest per-row cosine
similarity. With random weights this only bounds how much context matters to *this* encoder;
the released weights may attend further or less far.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.audio.beats import beats_from_checkpoint, random_checkpoint  # noqa: E402
from libs.audio.beats_config import ITER3_PLUS_AS2M  # noqa: E402
from libs.audio.extract import extract_waves  # noqa: E402


def synthetic_audio(seconds: float, seed: int) -> np.ndarray:
    """``(16000 * seconds,)`` float32: drifting tones, noise bursts and a noise floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    x = 0.01 * rng.standard_normal(n)
    for _ in range(6):
        f0, f1 = rng.uniform(100, 4000, 2)
        x += 0.1 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    env = (np.sin(2 * np.pi * t / rng.uniform(1.5, 4.0)) > 0.6).astype(np.float64)
    x += 0.2 * env * rng.standard_normal(n)
    return np.clip(x, -1, 1).astype(np.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def bench_speed(model: torch.nn.Module, device: torch.device, seconds: float, batch: int,
                runs: int) -> Dict[str, Any]:
    waves = [synthetic_audio(seconds, seed) for seed in range(batch)]
    extract_waves(model, waves, device, batch_size=batch, chunk_seconds=0)              # warm-up
    times: List[float] = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        extract_waves(model, waves, device, batch_size=batch, chunk_seconds=0)
        _sync(device)
        times.append(time.perf_counter() - start)
    speeds = sorted(seconds * batch / t for t in times)
    return {"clip_seconds": seconds, "batch": batch, "runs": runs, "times_s": times,
            "audio_s_per_s_median": statistics.median(speeds), "audio_s_per_s_min": speeds[0],
            "audio_s_per_s_max": speeds[-1]}


def bench_chunks(model: torch.nn.Module, device: torch.device, seconds: float,
                 settings: List[List[float]]) -> List[Dict[str, Any]]:
    wave = synthetic_audio(seconds, seed=123)
    whole = extract_waves(model, [wave], device, chunk_seconds=0)[0]                    # (T, 768)
    std = float(whole.std())
    rows = []
    for chunk, overlap in settings:
        part = extract_waves(model, [wave], device, batch_size=4, chunk_seconds=chunk,
                             overlap_seconds=overlap)[0]
        assert part.shape == whole.shape
        diff = np.abs(part - whole)
        cos = (part * whole).sum(1) / (np.linalg.norm(part, axis=1) * np.linalg.norm(whole, axis=1))
        rows.append({"chunk_s": chunk, "overlap_s": overlap, "max_abs": float(diff.max()),
                     "mean_abs": float(diff.mean()), "max_rel_std": float(diff.max() / std),
                     "min_row_cosine": float(cos.min())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="clip length (Perception Test videos are ~30 s)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--long-seconds", type=float, default=60.0, help="0 skips the chunk comparison")
    parser.add_argument("--chunks", default="10:2,20:4,30:10", help="chunk:overlap seconds, comma separated")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = beats_from_checkpoint(random_checkpoint(ITER3_PLUS_AS2M, seed=0), "random iter3+").to(device)
    result: Dict[str, Any] = {"machine": machine(device), "device": args.device}
    speed = bench_speed(model, device, args.seconds, args.batch, args.runs)
    result["speed"] = speed
    print(f"machine: {result['machine']}")
    print(f"speed ({args.seconds:g} s clips, batch {args.batch}, {args.runs} runs): "
          f"{speed['audio_s_per_s_median']:.1f} audio-s/s median "
          f"({speed['audio_s_per_s_min']:.1f}..{speed['audio_s_per_s_max']:.1f})")
    if args.long_seconds > 0:
        settings = [[float(v) for v in s.split(":")] for s in args.chunks.split(",") if s]
        result["chunks"] = bench_chunks(model, device, args.long_seconds, settings)
        print(f"chunked vs unchunked on a {args.long_seconds:g} s clip (random weights):")
        print("  chunk_s overlap_s   max_abs  mean_abs  max/std  min_row_cos")
        for r in result["chunks"]:
            print(f"  {r['chunk_s']:7g} {r['overlap_s']:9g} {r['max_abs']:9.4f} {r['mean_abs']:9.5f} "
                  f"{r['max_rel_std']:8.4f} {r['min_row_cosine']:12.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
