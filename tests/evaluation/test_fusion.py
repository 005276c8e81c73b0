"""Tests of libs/evaluation/fusion.py and tools/fuse_results.py on synthetic raw candidate folders."""
from __future__ import annotations

import dataclasses

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.common.errors import UserError
from libs.evaluation.fusion import (check_compatible, detections_list, fuse_pool, pool_candidates,
                               run_nms, weighted_segment_fusion)
from libs.config import NmsConfig
from libs.evaluation.raw_candidates import (load_raw_dir, prepare_raw_dir, raw_candidate_hook,
                                       save_raw_candidates, write_raw_meta)
from libs.evaluation.metrics import evaluate_map
from libs.evaluation.events import GroundTruth, predictions_from_detections
from libs.ops.nms import batched_nms
from libs.evaluation.submission import load_submission

ROOT = Path(__file__).resolve().parents[2]
TASK = "sound_localisation"
K = 3


def cands(segs, scores, labels, duration=30.0):
    return {"segments": np.asarray(segs, np.float32).reshape(-1, 2),
            "scores": np.asarray(scores, np.float32), "labels": np.asarray(labels, np.int64),
            "duration": float(duration)}


def random_run(seed, n_videos=3, n=40, duration=30.0):
    rng = np.random.default_rng(seed)
    run = {}
    for v in range(n_videos):
        start = rng.uniform(-1.0, duration - 2.0, n)
        length = rng.uniform(0.5, 8.0, n)
        run[f"vid{v}"] = cands(np.stack([start, start + length], 1), rng.uniform(0.01, 1.0, n),
                               rng.integers(0, K, n), duration)
    return run


def write_run(folder: Path, run, split="valid", task=TASK, num_classes=K, **meta):
    for vid, c in run.items():
        save_raw_candidates(str(folder), vid, c["segments"], c["scores"], c["labels"], c["duration"])
    write_raw_meta(str(folder), {"task": task, "split": split, "num_classes": num_classes,
                                 "checkpoint": str(folder / "ckpt.pth.tar"), **meta})
    return folder


def sorted_rows(d):
    """(label, score, start, end) rows sorted, for order-free comparisons."""
    rows = np.column_stack([d["labels"], d["scores"], d["segments"]]).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


# ------------------------------------------------------------------------------ raw I/O

def test_raw_round_trip_and_errors(tmp_path):
    run = random_run(0)
    d = write_run(tmp_path / "a", run, video_ids=list(run))
    save_raw_candidates(str(d), "vid0", torch.from_numpy(run["vid0"]["segments"]),
                        torch.from_numpy(run["vid0"]["scores"]),
                        torch.from_numpy(run["vid0"]["labels"]), 30.0)   # torch input works too
    meta, loaded = load_raw_dir(str(d))
    assert meta["task"] == TASK and meta["format"].startswith("perception-raw-candidates")
    assert list(loaded) == ["vid0", "vid1", "vid2"]
    for vid in run:
        for key in ("segments", "scores", "labels"):
            np.testing.assert_array_equal(loaded[vid][key], run[vid][key])
        assert loaded[vid]["duration"] == 30.0 and loaded[vid]["labels"].dtype == np.int64

    with pytest.raises(UserError, match="not found"):
        load_raw_dir(str(tmp_path / "nope"))
    (tmp_path / "nometa").mkdir()
    with pytest.raises(UserError, match="meta not found"):
        load_raw_dir(str(tmp_path / "nometa"))
    (d / "vid1.npz").write_bytes(b"not a zip file")
    (d / "vid2.npz").unlink()
    with pytest.raises(UserError) as err:
        load_raw_dir(str(d))
    msg = str(err.value)
    assert "vid1.npz: unreadable npz" in msg and "vid2.npz: missing" in msg
    bad = write_run(tmp_path / "bad", {"v": cands([[0, 1]], [0.5], [K]),   # label K >= K
                                       "w": cands([[2, 1]], [0.5], [0])})  # reversed
    with pytest.raises(UserError) as err:
        load_raw_dir(str(bad))
    assert "v.npz: labels outside [0, 3)" in str(err.value) and "w.npz: segments with" in str(err.value)
    with pytest.raises(UserError, match="bad video id"):
        save_raw_candidates(str(tmp_path), "../x", [[0, 1]], [0.5], [0], 1.0)


def test_raw_hook_prepare_dir_and_settings(tmp_path):
    from libs.datasets.timegrid import TimeGrid
    out = prepare_raw_dir(str(tmp_path / "raw"))
    hook = raw_candidate_hook(str(out))
    hook("v", {"segments": torch.tensor([[-1.0, 3.0]]), "scores": torch.tensor([0.5]),
               "labels": torch.tensor([2])}, TimeGrid(2.0, 1.0, 1.0, 10.0))
    write_raw_meta(str(out), {"task": TASK, "split": "valid", "num_classes": K})
    _, runs = load_raw_dir(str(out))
    np.testing.assert_allclose(runs["v"]["segments"], [[-0.25, 1.75]])    # seconds, not clipped
    assert runs["v"]["duration"] == 10.0
    with pytest.raises(UserError, match="--overwrite"):
        prepare_raw_dir(str(out))
    prepare_raw_dir(str(out), overwrite=True)
    assert not list(out.iterdir())


def test_mismatched_meta(tmp_path):
    run = random_run(1)
    a = load_raw_dir(str(write_run(tmp_path / "a", run)))[0]
    b = load_raw_dir(str(write_run(tmp_path / "b", run, split="test")))[0]
    c = load_raw_dir(str(write_run(tmp_path / "c", run, task="action_localisation")))[0]
    with pytest.raises(UserError, match="differ in split"):
        check_compatible([a, b], ["a", "b"])
    with pytest.raises(UserError, match="differ in task"):
        check_compatible([a, c], ["a", "c"])
    check_compatible([a, a], ["a", "a2"])


# ------------------------------------------------------------------------------ pool mode

def test_pool_one_run_equals_its_nms():
    run, s = random_run(2), NmsConfig()
    fused = fuse_pool([run], s)
    for vid, c in run.items():
        segs, scores, labels = batched_nms(torch.from_numpy(c["segments"]),
                                           torch.from_numpy(c["scores"]),
                                           torch.from_numpy(c["labels"]), **dataclasses.asdict(s))
        np.testing.assert_array_equal(fused[vid]["segments"], segs.clamp(0, 30.0).numpy())
        np.testing.assert_array_equal(fused[vid]["scores"], scores.numpy())
        np.testing.assert_array_equal(fused[vid]["labels"], labels.numpy())
    assert fused["vid0"]["segments"].min() >= 0      # candidates start below 0: clipped


def test_pool_two_identical_runs_keeps_segments_and_tops():
    run = random_run(3)
    one, two = fuse_pool([run], NmsConfig()), fuse_pool([run, run], NmsConfig())
    pooled = pool_candidates([run, run], [1.0, 0.5])
    assert len(pooled["vid0"]["scores"]) == 2 * len(run["vid0"]["scores"])
    np.testing.assert_allclose(pooled["vid0"]["scores"][40:], run["vid0"]["scores"] * 0.5)
    # each duplicate decays the others once more, so some may fall below min_score: with
    # min_score 0 the kept segment sets are equal, with the default a subset
    s0 = NmsConfig(min_score=0.0)
    one0, two0 = fuse_pool([run], s0), fuse_pool([run, run], s0)
    key = lambda d: {(int(l), *np.round(s, 4)) for l, s in zip(d["labels"], d["segments"])}  # noqa
    for vid in run:
        assert key(one0[vid]) == key(two0[vid]) and key(two[vid]) <= key(one[vid])
        for cls in range(K):
            a, b = one[vid]["labels"] == cls, two[vid]["labels"] == cls
            if a.any():
                np.testing.assert_array_equal(two[vid]["segments"][b][0], one[vid]["segments"][a][0])
                assert two[vid]["scores"][b][0] == one[vid]["scores"][a][0]


# ------------------------------------------------------------------------------- WBF mode

def test_wbf_of_identical_runs_is_identity():
    dets = run_nms(random_run(4), NmsConfig())            # soft-NMS output: overlapping same-run duplicates
    fused = weighted_segment_fusion([dets, dets], max_seg_num=500)
    for vid in dets:
        np.testing.assert_allclose(sorted_rows(fused[vid]), sorted_rows(dets[vid]), rtol=1e-6)
        assert np.all(np.diff(fused[vid]["scores"]) <= 0)


def test_wbf_averages_boundaries_and_halves_lone_segments():
    a = {"v": cands([[0, 10], [20, 25]], [0.8, 0.6], [0, 1])}
    b = {"v": cands([[1, 11], [20, 25.5]], [0.4, 0.6], [0, 2])}   # class 1 only in a, 2 only in b
    f = weighted_segment_fusion([a, b])["v"]
    np.testing.assert_allclose(f["segments"], [[1 / 3, 31 / 3], [20, 25], [20, 25.5]], rtol=1e-6)
    np.testing.assert_allclose(f["scores"], [0.6, 0.3, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(f["labels"], [0, 1, 2])
    # weights 3:1 -> boundaries weighted by 3*0.8 vs 0.4, lone segments scaled by 3/4 and 1/4
    f = weighted_segment_fusion([a, b], [3.0, 1.0])["v"]
    np.testing.assert_allclose(f["segments"][0], [0.4 / 2.8, 10 + 0.4 / 2.8], rtol=1e-6)
    np.testing.assert_allclose(f["scores"], [(2.4 + 0.4) / 4, 0.45, 0.15], rtol=1e-6)
    # IoU below the threshold: two clusters; 'max' keeps the best weighted score / max weight
    c = {"v": cands([[5, 15]], [0.9], [0])}
    f = weighted_segment_fusion([a, c], iou_thr=0.6, conf_type="max")["v"]
    assert sorted(f["scores"].tolist()) == pytest.approx([0.6, 0.8, 0.9])
    assert len(weighted_segment_fusion([a, b], skip_thr=0.5)["v"]["scores"]) == 3   # 0.4 skipped


def test_wbf_matches_plain_loop_reference():
    runs = [run_nms(random_run(s), NmsConfig()) for s in (5, 6, 7)]
    w = np.array([1.0, 2.0, 0.5])
    fused = weighted_segment_fusion(runs, w, iou_thr=0.5, max_seg_num=0)
    for vid in runs[0]:
        ref = []
        for cls in range(K):
            items = [(float(r[vid]["scores"][i]) * w[m], m, r[vid]["segments"][i].astype(float))
                     for m, r in enumerate(runs) for i in np.nonzero(r[vid]["labels"] == cls)[0]]
            items.sort(key=lambda t: -t[0])
            clusters = []                     # [sum ws, sum ws*seg, models]
            for ws, m, seg in items:
                for cl in clusters:
                    fseg = cl[1] / cl[0]
                    inter = max(0.0, min(fseg[1], seg[1]) - max(fseg[0], seg[0]))
                    iou = inter / ((fseg[1] - fseg[0]) + (seg[1] - seg[0]) - inter)
                    if iou >= 0.5 and m not in cl[2]:
                        cl[0] += ws; cl[1] = cl[1] + ws * seg; cl[2].add(m)
                        break
                else:
                    clusters.append([ws, ws * seg, {m}])
            ref += [(cls, cl[0] / w.sum(), *(cl[1] / cl[0])) for cl in clusters]
        ref = np.array(ref)
        ref = ref[np.lexsort(ref.T[::-1])]
        np.testing.assert_allclose(sorted_rows(fused[vid]), ref, rtol=1e-5, atol=1e-5)


def test_missing_video_fused_from_existing_runs(caplog):
    a, b = random_run(8), random_run(9)
    del b["vid2"]
    with caplog.at_level(logging.WARNING):
        pooled = fuse_pool([a, b], NmsConfig())
    assert "run 2 lacks 1 of 3 videos" in caplog.text
    np.testing.assert_array_equal(pooled["vid2"]["scores"], run_nms(a, NmsConfig())["vid2"]["scores"])
    da = run_nms(a, NmsConfig())
    fused = weighted_segment_fusion([da, run_nms(b, NmsConfig())])
    np.testing.assert_allclose(sorted_rows(fused["vid2"]), sorted_rows(da["vid2"]), rtol=1e-6)


# ------------------------------------------------------------------- quality on synthetic GT

def synthetic_case(n_videos=12, seed=0):
    """GT plus a good run (small jitter, few false positives) and a noisy run."""
    rng = np.random.default_rng(seed)
    gt_rows, good, noisy = [], {}, {}
    for v in range(n_videos):
        vid, dur = f"vid{v}", 60.0
        n = int(rng.integers(2, 5))
        st = rng.uniform(0, 45, n); ln = rng.uniform(2, 12, n); lab = rng.integers(0, K, n)
        gt_rows += [(vid, s, s + l, c) for s, l, c in zip(st, ln, lab)]
        for run, jit, n_fp, lo in ((good, 0.05, 10, 0.5), (noisy, 0.35, 60, 0.05)):
            seg = np.stack([st, st + ln], 1).repeat(3, 0) + rng.normal(0, jit, (3 * n, 2)) * ln.repeat(3)[:, None]
            sc = rng.uniform(lo, 1.0, 3 * n)
            fp_s = rng.uniform(0, 50, n_fp)
            fp = np.stack([fp_s, fp_s + rng.uniform(1, 10, n_fp)], 1)
            seg.sort(axis=1)
            run[vid] = cands(np.concatenate([seg, fp]), np.concatenate([sc, rng.uniform(0, 0.9, n_fp)]),
                             np.concatenate([lab.repeat(3), rng.integers(0, K, n_fp)]), dur)
    v, s, e, c = zip(*gt_rows)
    gt = GroundTruth(np.array(v), np.array(s), np.array(e), np.array(c))
    return gt, good, noisy, gt_rows


def test_fusion_of_good_and_noisy_run_beats_noisy(capsys):
    gt, good, noisy, _ = synthetic_case()
    score = lambda d: evaluate_map(gt, predictions_from_detections(detections_list(d))).average_map  # noqa
    m_good, m_noisy = score(run_nms(good, NmsConfig())), score(run_nms(noisy, NmsConfig()))
    m_pool = score(fuse_pool([good, noisy], NmsConfig()))
    m_wbf = score(weighted_segment_fusion([run_nms(good, NmsConfig()), run_nms(noisy, NmsConfig())]))
    with capsys.disabled():
        print(f"\n[fusion synthetic] avg mAP good {m_good:.4f} noisy {m_noisy:.4f} "
              f"pool {m_pool:.4f} wbf {m_wbf:.4f}")
    assert m_good > m_noisy
    assert m_pool >= m_noisy and m_wbf >= m_noisy


# -------------------------------------------------------------------------------------- CLI

def _annotations(path: Path, gt_rows) -> None:
    data = {}
    for vid, s, e, c in gt_rows:
        entry = data.setdefault(vid, {"metadata": {"split": "valid", "num_frames": 1800,
                                                   "frame_rate": 30.0}, TASK: []})
        entry[TASK].append({"id": len(entry[TASK]), "label": f"class{c}", "label_id": int(c),
                            "timestamps": [int(s * 1e6), int(e * 1e6)]})
    path.write_text(json.dumps(data))


def _tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "fuse_results.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli(tmp_path, capsys):
    from tools.fuse_results import main
    _, good, noisy, gt_rows = synthetic_case(n_videos=6)
    del noisy["vid5"]
    a, b = write_run(tmp_path / "good", good), write_run(tmp_path / "noisy", noisy)
    ann = tmp_path / "ann.json"
    _annotations(ann, gt_rows)
    out = tmp_path / "fused.json"
    assert main([str(a), str(b), "--out", str(out), "--mode", "wbf", "--weights", "2", "1",
                 "--annotations", str(ann)]) == 0
    text = capsys.readouterr().out
    assert "[RESULTS] run 1" in text and "[RESULTS] fusion (wbf)" in text and "[SUMMARY]" in text
    preds = load_submission(str(out), TASK)
    sub = json.loads(out.read_text())
    assert sorted(sub) == [f"vid{i}" for i in range(6)] and len(preds) > 0
    for entries in sub.values():
        scores = [float(e["score"]) for e in entries[TASK]]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 500
    metrics = json.loads((tmp_path / "fused_metrics.json").read_text())
    assert len(metrics["runs"]) == 2 and 0 < metrics["fusion"]["average_map"] <= 1

    res = _tool(a, b, "--out", out)                                     # exists, no --overwrite
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "--overwrite" in lines[0]
    c = write_run(tmp_path / "other", good, split="test")
    res = _tool(a, c, "--out", tmp_path / "x.json", "--weights", "1", "1")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "differ in split" in lines[0]
    assert not (tmp_path / "x.json").exists()
