"""Distributed evaluation: the shards of ``predict_dataset`` and ``torchrun ... eval.py`` with 2
CPU processes (gloo), including a process that raises and one that stalls past
``train.dist_timeout``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import eval as eval_cli
import train as train_cli
from libs.datasets.loader import length_grouped_batches
from libs.evaluation.predict import DatasetShard, shard_ranges
from tools.make_demo_data import generate_demo_data

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
needs_dist = pytest.mark.skipif(os.environ.get("SKIP_DIST_TESTS") == "1", reason="SKIP_DIST_TESTS=1")


# ---------------------------------------------------------------- shards (no processes)

class _Lengths:
    """Stands in for a PerceptionDataset: only grid lengths (and no cache)."""
    use_cache = False

    def __init__(self, lengths):
        self.lengths = list(lengths)

    def __len__(self):
        return len(self.lengths)

    def grid_length(self, index):
        return self.lengths[index]


def test_shard_ranges_cut_at_batch_boundaries_into_near_equal_runs():
    sizes = [4, 4, 1, 4, 2, 4, 4]                                   # 23 videos
    ends = set(np.cumsum([0] + sizes).tolist())
    for world in (1, 2, 3, 4, 9):
        ranges = shard_ranges(sizes, world)
        assert len(ranges) == world and ranges[0][0] == 0 and ranges[-1][1] == 23
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))      # contiguous, in order
        assert all(start in ends and stop in ends for start, stop in ranges)
        if world <= 3:
            counts = [stop - start for start, stop in ranges]
            assert max(counts) - min(counts) <= 4                      # within one batch
    assert shard_ranges([], 2) == [(0, 0), (0, 0)]
    assert shard_ranges([2], 2) in ([(0, 0), (0, 2)], [(0, 2), (2, 2)])   # fewer batches than ranks


@pytest.mark.parametrize("world", [2, 3, 4])
def test_each_shard_is_grouped_into_the_single_process_batches(world):
    # unequal padded lengths: the grouping depends on where a scan starts, so a shard must
    # start at a batch boundary (a shard cut in mid-run would regroup its videos)
    data = _Lengths([96, 96, 96, 128, 128, 96, 96, 96, 96, 96, 128, 96, 96])
    batches = length_grouped_batches(data, 3, 96, 32)
    ranges = shard_ranges([len(b) for b in batches], world)
    regrouped = []
    for start, stop in ranges:
        shard = DatasetShard(data, start, stop)
        regrouped += [[start + i for i in b] for b in length_grouped_batches(shard, 3, 96, 32)]
    assert regrouped == batches
    # a cut inside a batch would regroup: from video 6 on, [6, 7, 8] is no batch of one process
    assert batches[2] == [5, 6, 7]
    cut = DatasetShard(data, 6, len(data))
    first = [6 + i for i in length_grouped_batches(cut, 3, 96, 32)[0]]
    assert first == [6, 7, 8] and first not in batches


# ---------------------------------------------------------------- torchrun eval.py

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run on 5 validation videos (3 inference batches of 2, 2, 1)."""
    root = tmp_path_factory.mktemp("dist_eval")
    data = root / "data"
    generate_demo_data(data, seed=1, num_train=4, num_valid=5, num_test=0, min_duration=4.0,
                       max_duration=6.0)
    opts = [f"dataset.annotation_file={data / 'annotations.json'}",
            f"dataset.modalities.0.path={data / 'features' / 'beats'}",
            f"dataset.modalities.1.path={data / 'features' / 'umt'}",
            f"output_folder={root / 'ckpt'}", "model.embd_dim=16", "model.n_head=2",
            "loader.batch_size=4", "loader.eval_batch_size=2", "loader.num_workers=0",
            "opt.epochs=1", "opt.warmup_epochs=0", "train.eval_freq=0",
            "test_cfg.nms.max_seg_num=30"]
    assert train_cli.main([str(ROOT / "configs/demo_tsl_train.yaml"), "--output", "r", "--device",
                           "cpu", "--no-progress", "--threads", "1", "--opt", *opts]) == 0
    return {"root": root, "exp": root / "ckpt" / "demo_tsl_train_r", "opts": opts}


def _eval_args(run, out: Path, *more, opts=()) -> list:
    return ["configs/demo_tsl_train.yaml", str(run["exp"]), "--split", "valid", "--device", "cpu",
            "--no-progress", "--threads", "1", "--out", str(out), *more, "--opt", *run["opts"],
            *opts]


def _torchrun(script: str, args: list, timeout: float, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", script, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@needs_dist
def test_torchrun_eval_writes_the_single_process_submission(run, tmp_path):
    single, multi = tmp_path / "single.json", tmp_path / "multi.json"
    assert eval_cli.main(_eval_args(run, single, "--save-raw", str(tmp_path / "raw1"))) == 0
    proc = _torchrun("eval.py", _eval_args(run, multi, "--save-raw", str(tmp_path / "raw2")), 240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert multi.read_bytes() == single.read_bytes()                  # byte for byte
    m1, m2 = (json.loads((tmp_path / f"{n}_metrics.json").read_text()) for n in ("single", "multi"))
    assert m1 == m2 and set(m1["map_per_tiou"]) == {"0.10", "0.20", "0.30", "0.40", "0.50"}
    assert sum(len(v["sound_localisation"]) for v in json.loads(single.read_text()).values()) > 0
    assert "process 1 of 2 predicts videos" not in proc.stderr       # rank 1 logs warnings only
    assert proc.stderr.count("submission:") == 1                       # rank 0 alone writes
    raw1, raw2 = sorted((tmp_path / "raw1").iterdir()), sorted((tmp_path / "raw2").iterdir())
    assert [p.name for p in raw1] == [p.name for p in raw2] and len(raw1) == 6   # 5 videos + meta
    for a, b in zip(raw1, raw2):
        if a.suffix == ".npz":
            with np.load(a) as x, np.load(b) as y:
                assert all(np.array_equal(x[k], y[k]) for k in x.files)


@needs_dist
def test_a_process_that_raises_fails_the_job_at_once_with_its_error(run, tmp_path):
    out = tmp_path / "never.json"
    args = _eval_args(run, out, opts=["train.dist_timeout=120"])
    t0 = time.monotonic()
    proc = _torchrun("tests/evaluation/dist_fault_eval.py", args, 200, FAULT="raise", FAULT_RANK="1")
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    first = proc.stderr.index("RuntimeError: injected failure on rank 1")
    # rank 0 is stopped by torchrun or, if its gather sees the closed connection first, fails
    # with one line pointing at the error above (torchrun's "Root Cause" may then name either
    # rank: both fail within the same second)
    peer = proc.stderr.find("error: gathering the detections to rank 0 failed (process 0 of 2)")
    assert peer == -1 or peer > first
    assert elapsed < 100                      # no wait for the 120 s timeout
    assert not out.exists()


@needs_dist
def test_a_stalled_process_fails_the_job_within_the_timeout(run, tmp_path):
    out = tmp_path / "never.json"
    # 6 s: long enough for both processes to join the process group on a busy machine (the
    # timeout bounds that rendezvous too), short for a test
    args = _eval_args(run, out, opts=["train.dist_timeout=6"])
    t0 = time.monotonic()
    proc = _torchrun("tests/evaluation/dist_fault_eval.py", args, 200, FAULT="stall", FAULT_RANK="1")
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "gathering the detections to rank 0 failed (process 0 of 2)" in errors[0]
    assert "train.dist_timeout (6 s)" in errors[0]
    assert 6 <= elapsed < 6 + 90                # the stalled rank is stopped: no 10-minute hang
    assert not out.exists()
