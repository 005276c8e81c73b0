"""End-to-end checks of training and evaluation on one device, on a tiny generated demo dataset
(step 5 of benchmarks/gpu_check.sh; ``--device cpu`` rehearses the same checks without a GPU).

    python benchmarks/gpu_e2e.py WORK_DIR [--device cuda|cpu] [--no-compile]

1. fp32 training on the device; evaluation on the device and on the CPU (C++ NMS): same mAP.
2. bf16 training (``train.amp: bf16``, autocast); fp32 weights in the checkpoint; evaluation with
   ``--amp bf16``; the fp32 checkpoint evaluated with ``--amp bf16`` stays within 2 mAP points.
3. ``train.compile: true`` training (unless ``--no-compile``): it trains, with its wall time.
4. A unified action + sound model (configs/demo_unified_train.yaml) trained on the device;
   evaluation there and on the CPU: same headline mAP, both task lists for every video.
5. ``torchrun --standalone --nproc_per_node 1 eval.py`` (the distributed path: process group,
   shards, gather to rank 0) writes the single-process submission byte for byte.

Prints one ``check: ...`` line per check and exits 1 at the first failed check.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval as eval_cli  # noqa: E402
import train as train_cli  # noqa: E402
from tools.make_demo_data import generate_demo_data  # noqa: E402

CONFIG = str(ROOT / "configs" / "demo_tsl_train.yaml")


class CheckFailed(Exception):
    pass


def _opts(work: Path) -> List[str]:
    d = work / "data"
    return [f"dataset.annotation_file={d / 'annotations.json'}",
            f"dataset.modalities.0.path={d / 'features' / 'beats'}",
            f"dataset.modalities.1.path={d / 'features' / 'umt'}", f"output_folder={work / 'ckpt'}",
            "model.embd_dim=64", "loader.batch_size=4", "loader.eval_batch_size=2",
            "loader.num_workers=0", "opt.epochs=2", "opt.warmup_epochs=1", "train.eval_freq=0"]


def _train(work: Path, name: str, device: str, *opts: str) -> Path:
    argv = [CONFIG, "--output", name, "--device", device, "--no-progress", "--opt", *_opts(work),
            *opts]
    if train_cli.main(argv) != 0:
        raise CheckFailed(f"train.py {name}")
    return work / "ckpt" / f"demo_tsl_train_{name}"


def _eval_args(work: Path, run: Path, out: Path, device: str, *more: str) -> List[str]:
    return [CONFIG, str(run), "--split", "valid", "--device", device, "--no-progress", "--out",
            str(out), "--overwrite", *more, "--opt", *_opts(work)]


def _eval(work: Path, run: Path, out: Path, device: str, *more: str) -> float:
    if eval_cli.main(_eval_args(work, run, out, device, *more)) != 0:
        raise CheckFailed(f"eval.py {out.name}")
    return json.loads(Path(str(out.with_suffix("")) + "_metrics.json").read_text())["average_map"]


def _unified_check(work: Path, device: str) -> str:
    """A unified (action + sound) model trained on ``device``; its eval there and on the CPU agree
    and the submission holds both lists for every video."""
    d = work / "data" / "features"
    config = str(ROOT / "configs" / "demo_unified_train.yaml")
    opts = [f"dataset.annotation_file={work / 'data' / 'annotations.json'}",
            f"dataset.modalities.0.path={d / 'umt'}", f"dataset.modalities.1.path={d / 'videomae'}",
            f"dataset.modalities.2.path={d / 'beats'}", f"output_folder={work / 'ckpt'}",
            "model.embd_dim=64", "loader.batch_size=4", "loader.eval_batch_size=2",
            "opt.epochs=2", "opt.warmup_epochs=1", "train.eval_freq=0"]
    if train_cli.main([config, "--output", "unified", "--device", device, "--no-progress",
                       "--opt", *opts]) != 0:
        raise CheckFailed("train.py unified")
    run = work / "ckpt" / "demo_unified_train_unified"
    maps = []
    for dev, extra in ((device, []), ("cpu", ["test_cfg.nms.backend=cpp"])):
        out = work / f"unified_{dev}.json"
        if eval_cli.main([config, str(run), "--split", "valid", "--device", dev, "--no-progress",
                          "--out", str(out), "--overwrite", "--opt", *opts, *extra]) != 0:
            raise CheckFailed(f"eval.py unified on {dev}")
        sub = json.loads(out.read_text())
        if not all(set(v) == {"action_localisation", "sound_localisation"} for v in sub.values()):
            raise CheckFailed("unified submission without both task lists")
        maps.append(json.loads(Path(str(out.with_suffix("")) + "_metrics.json").read_text())[
            "average_map"])
    if abs(maps[0] - maps[1]) >= 0.01:
        raise CheckFailed(f"unified eval on {device} ({maps[0]:.4f}) and cpu ({maps[1]:.4f}) "
                          "disagree")
    return (f"unified action + sound model on {device}: headline {100 * maps[0]:.2f} vs cpu "
            f"{100 * maps[1]:.2f}, both lists for every video")


def run_checks(work: Path, device: str, compile_check: bool) -> List[str]:
    """The checks of the module docstring; returns their summary lines."""
    work.mkdir(parents=True, exist_ok=True)
    generate_demo_data(work / "data", num_train=8, num_valid=4, num_test=0, min_duration=6,
                       max_duration=10)
    lines = []
    fp32 = _train(work, "fp32", device)
    on_dev = _eval(work, fp32, work / "dev.json", device)
    on_cpu = _eval(work, fp32, work / "cpu.json", "cpu", "--opt", "test_cfg.nms.backend=cpp")
    if abs(on_dev - on_cpu) >= 0.01:
        raise CheckFailed(f"fp32 eval on {device} ({on_dev:.4f}) and cpu ({on_cpu:.4f}) disagree")
    lines.append(f"fp32 train+eval on {device}: average mAP {100 * on_dev:.2f} vs cpu "
                 f"{100 * on_cpu:.2f}")

    t0 = time.time()
    bf16 = _train(work, "bf16", device, "train.amp=bf16")
    bf16_s = time.time() - t0
    weights = torch.load(sorted(bf16.glob("epoch_*.pth.tar"))[-1], map_location="cpu",
                         weights_only=True)["state_dict"]
    if any(v.is_floating_point() and v.dtype != torch.float32 for v in weights.values()):
        raise CheckFailed("bf16 training saved non-fp32 weights")
    bf16_map = _eval(work, bf16, work / "bf16.json", device, "--amp", "bf16")
    mixed = _eval(work, fp32, work / "fp32_evalbf16.json", device, "--amp", "bf16")
    if abs(mixed - on_dev) >= 0.02:
        raise CheckFailed(f"eval --amp bf16 ({mixed:.4f}) vs fp32 ({on_dev:.4f}): > 2 points")
    lines.append(f"bf16 train ({bf16_s:.1f} s) + eval --amp bf16 on {device}: average mAP "
                 f"{100 * bf16_map:.2f}; fp32 checkpoint with --amp bf16 {100 * mixed:.2f}")

    if compile_check:
        t0 = time.time()
        compiled = _train(work, "compile", device, "train.compile=true")
        compile_map = _eval(work, compiled, work / "compile.json", device)
        lines.append(f"train.compile on {device}: trained in {time.time() - t0:.1f} s "
                     f"(compilation included); average mAP {100 * compile_map:.2f}")
    else:
        lines.append("train.compile: skipped (--no-compile)")

    unified = _unified_check(work, device)
    lines.append(unified)

    dist_out = work / "dist.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "1", "eval.py",
                           *_eval_args(work, fp32, dist_out, device)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise CheckFailed(f"torchrun eval.py (rc {proc.returncode}): {proc.stderr[-2000:]}")
    if dist_out.read_bytes() != (work / "dev.json").read_bytes():
        raise CheckFailed("torchrun eval.py wrote another submission than eval.py")
    backend = "nccl" if device == "cuda" else "gloo"
    lines.append(f"distributed eval (torchrun --nproc_per_node 1, {backend}) on {device}: "
                 f"submission identical to single-process")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", help="scratch folder (data, runs, results)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--no-compile", action="store_true", help="skip the train.compile check")
    args = p.parse_args(argv)
    try:
        lines = run_checks(Path(args.work), args.device, not args.no_compile)
    except CheckFailed as err:
        print(f"check FAILED: {err}")
        return 1
    for line in lines:
        print(f"check: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
