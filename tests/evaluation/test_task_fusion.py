"""Raw candidates and fusion of several tasks (a unified model): the raw meta's task layout,
per-task pooling / NMS / WBF, per-task NMS settings, and tools/fuse_results.py on two-task
folders equal to fusing each task's candidates on their own."""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from libs.common.errors import UserError
from libs.config import NmsConfig
from libs.config.tasks import TaskLayout
from libs.evaluation.fusion import (check_compatible, fuse_pool, fuse_pool_tasks, fuse_wbf_tasks,
                                    run_nms, run_nms_tasks, task_candidates, task_nms_settings,
                                    weighted_segment_fusion)
from libs.evaluation.raw_candidates import (load_raw_dir, raw_layout, save_raw_candidates,
                                            write_raw_meta)
from tools.fuse_results import main as fuse_main

ACT, SND = "action_localisation", "sound_localisation"
LAYOUT = TaskLayout((ACT, SND), (4, 3))          # joint ids: actions 0..3, sounds 4..6


def joint_run(seed, n_videos=4, n=60, duration=30.0):
    """Candidates of both tasks per video, JOINT labels."""
    rng = np.random.default_rng(seed)
    run = {}
    for v in range(n_videos):
        start = rng.uniform(-1.0, duration - 2.0, n)
        run[f"vid{v}"] = {"segments": np.stack([start, start + rng.uniform(0.5, 8.0, n)], 1)
                          .astype(np.float32), "scores": rng.uniform(0.01, 1.0, n).astype(np.float32),
                          "labels": rng.integers(0, LAYOUT.total_classes, n).astype(np.int64),
                          "duration": duration}
    return run


def local(cands, task):
    """One task's candidates with task-local labels (what a one-task model would have stored)."""
    lo = LAYOUT.class_range(task)[0]
    return {v: dict(c, labels=c["labels"] - lo) for v, c in task_candidates(cands, LAYOUT, task).items()}


def write_folder(folder: Path, run, layout=None, meta=None):
    for vid, c in run.items():
        save_raw_candidates(str(folder), vid, c["segments"], c["scores"], c["labels"], c["duration"])
    base = {"split": "valid", "checkpoint": str(folder / "ckpt.pth.tar"), **(meta or {})}
    write_raw_meta(str(folder), base, layout)
    return folder


def assert_same(a, b):
    assert list(a) == list(b)
    for vid in a:
        for key in ("segments", "scores", "labels"):
            np.testing.assert_array_equal(a[vid][key], b[vid][key])


# ------------------------------------------------------------------------------ raw meta

def test_meta_layout_round_trip_and_old_folders(tmp_path):
    d = write_folder(tmp_path / "two", joint_run(0), LAYOUT)
    meta, runs = load_raw_dir(str(d))
    assert meta["task"] == [ACT, SND] and meta["num_classes"] == 7
    assert meta["tasks"] == [ACT, SND] and meta["task_num_classes"] == [4, 3]
    assert raw_layout(meta) == LAYOUT and len(runs) == 4
    one = write_folder(tmp_path / "one", local(joint_run(0), SND), meta={"task": SND, "num_classes": 3})
    meta1 = load_raw_dir(str(one))[0]
    assert meta1["tasks"] == [SND] and meta1["task_num_classes"] == [3]
    old = json.loads((one / "meta.json").read_text())          # a folder from before the keys
    del old["tasks"], old["task_num_classes"]
    (one / "meta.json").write_text(json.dumps(old))
    assert raw_layout(load_raw_dir(str(one))[0]) == TaskLayout.single(SND, 3)
    check_compatible([meta1, load_raw_dir(str(one))[0]], ["new", "old"])

    for change, needle in (({"task_num_classes": [4, 2]}, "not the sum of task_num_classes"),
                           ({"tasks": [ACT, ACT]}, "expected a list of distinct task names"),
                           ({"task_num_classes": [4]}, "expected 2 int(s) >= 1, one per task"),
                           ({"task": SND}, "does not match tasks")):
        bad = dict(meta, **change)
        (d / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=re.escape(needle)):
            load_raw_dir(str(d))
    other = dict(meta, task_num_classes=[3, 4])                 # same tasks and total
    with pytest.raises(UserError, match="differ in task_num_classes"):
        check_compatible([meta, other], ["a", "b"])


# ------------------------------------------------------------------------------ per-task fusion

@pytest.mark.parametrize("multiclass", [True, False])
def test_pool_and_nms_per_task_equal_each_task_alone(multiclass):
    runs = [joint_run(1), joint_run(2)]
    s = [NmsConfig(multiclass=multiclass), NmsConfig(multiclass=multiclass, sigma=0.7,
                                                     max_seg_num=20)]
    fused = fuse_pool_tasks(runs, LAYOUT, s, [1.0, 0.5])
    nms = run_nms_tasks(runs[0], LAYOUT, s)
    for i, task, lo, _ in LAYOUT:
        alone = fuse_pool([local(r, task) for r in runs], s[i], [1.0, 0.5])
        got = {v: dict(c, labels=c["labels"] - lo) for v, c in task_candidates(fused, LAYOUT, task).items()}
        assert_same(got, alone)
        got = {v: dict(c, labels=c["labels"] - lo) for v, c in task_candidates(nms, LAYOUT, task).items()}
        assert_same(got, run_nms(local(runs[0], task), s[i]))
    assert max(len(task_candidates(fused, LAYOUT, SND)[v]["scores"]) for v in fused) == 20
    if not multiclass:      # class-agnostic: one joint NMS would let the tasks suppress each other
        joint = fuse_pool(runs, s[0], [1.0, 0.5])
        assert any(len(joint[v]["scores"]) != len(fused[v]["scores"]) or
                   not np.array_equal(np.sort(joint[v]["scores"]), np.sort(fused[v]["scores"]))
                   for v in fused)


def test_wbf_per_task_equals_each_task_alone():
    runs = [run_nms(joint_run(s), NmsConfig()) for s in (3, 4)]
    fused = fuse_wbf_tasks(runs, LAYOUT, weights=[2.0, 1.0], iou_thr=0.5, skip_thr=0.0,
                           conf_type="avg", max_seg_num=[30, 10])
    for i, task, lo, _ in LAYOUT:
        alone = weighted_segment_fusion([local(r, task) for r in runs], [2.0, 1.0], 0.5, 0.0, "avg",
                                        [30, 10][i])
        got = {v: dict(c, labels=c["labels"] - lo) for v, c in task_candidates(fused, LAYOUT, task).items()}
        assert_same(got, alone)


def test_task_nms_settings_from_meta_under_explicit_options():
    base = dataclasses.asdict(NmsConfig())
    meta = {"test_cfg": {"per_task": {SND: {"nms": {"sigma": 0.7, "max_seg_num": 20},
                                            "pre_nms_topk": 100}}}}
    act, snd = task_nms_settings(base, [], meta, LAYOUT, "m.json")
    assert act == NmsConfig() and snd == NmsConfig(sigma=0.7, max_seg_num=20)
    given = dict(base, sigma=0.3)
    act, snd = task_nms_settings(given, ["sigma"], meta, LAYOUT, "m.json")   # --sigma 0.3 wins
    assert act == NmsConfig(sigma=0.3) and snd == NmsConfig(sigma=0.3, max_seg_num=20)
    assert task_nms_settings(base, [], {}, LAYOUT, "m.json") == [NmsConfig(), NmsConfig()]
    with pytest.raises(UserError, match="m.json: test_cfg.per_task.sound_localisation.nms"):
        task_nms_settings(base, [], {"test_cfg": {"per_task": {SND: {"nms": {"sigma": -1}}}}},
                          LAYOUT, "m.json")


# ------------------------------------------------------------------------------ the tool

def _annotations(path: Path, runs) -> None:
    """Ground truth of both tasks per video: some of the first run's candidates, jittered."""
    rng = np.random.default_rng(7)
    data = {}
    for vid in runs[0]:
        entry = data[vid] = {"metadata": {"split": "valid", "num_frames": 900, "frame_rate": 30.0}}
        for _, task, lo, n in LAYOUT:
            c = local(runs[0], task)[vid]
            idx = np.argsort(-c["scores"])[:3]
            segs = np.clip(c["segments"][idx] + rng.normal(0, 0.3, (len(idx), 2)), 0, 30)
            segs.sort(axis=1)
            entry[task] = [{"id": k, "label": f"c{int(c['labels'][j])}", "label_id": int(c["labels"][j]),
                            "timestamps": [int(segs[k, 0] * 1e6), int(segs[k, 1] * 1e6) + 100000]}
                           for k, j in enumerate(idx)]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("mode", ["pool", "wbf"])
def test_tool_two_tasks_equals_each_task_alone(tmp_path, capsys, caplog, mode):
    runs = [joint_run(5), joint_run(6)]
    del runs[1]["vid3"]
    over = {"test_cfg": {"per_task": {SND: {"nms": {"sigma": 0.7, "max_seg_num": 15}}}}}
    dirs = [write_folder(tmp_path / f"two{i}", r, LAYOUT, over) for i, r in enumerate(runs)]
    ann = tmp_path / "ann.json"
    _annotations(ann, runs)
    out = tmp_path / "two.json"
    opts = ["--mode", mode, "--weights", "2", "1", "--min-score", "0.01"]
    with caplog.at_level(logging.WARNING):
        assert fuse_main([*map(str, dirs), "--out", str(out), *opts, "--annotations", str(ann)]) == 0
    text = capsys.readouterr().out
    assert caplog.text.count("run 2 lacks 1 of 4 videos") == 1
    sub = json.loads(out.read_text())
    assert sorted(sub) == [f"vid{i}" for i in range(4)]
    assert all(list(v) == [ACT, SND] for v in sub.values())
    metrics = json.loads((tmp_path / "two_metrics.json").read_text())
    assert metrics["tasks"] == [ACT, SND] and metrics["nms"][SND]["sigma"] == 0.7
    assert metrics["nms"][ACT]["sigma"] == 0.4 and metrics["nms"][ACT]["min_score"] == 0.01
    for i, task, _, n in LAYOUT:        # each task fused alone, by the one-task tool
        one = [write_folder(tmp_path / f"{task}{m}", local(r, task),
                            meta={"task": task, "num_classes": n}) for m, r in enumerate(runs)]
        extra = ["--sigma", "0.7", "--max-seg-num", "15"] if task == SND else []
        one_out = tmp_path / f"{task}.json"
        task_ann = tmp_path / f"ann_{task}.json"
        data = json.loads(ann.read_text())
        task_ann.write_text(json.dumps({v: {"metadata": e["metadata"], task: e[task]}
                                        for v, e in data.items()}))
        assert fuse_main([*map(str, one), "--out", str(one_out), *opts, *extra,
                          "--annotations", str(task_ann)]) == 0
        alone_text = capsys.readouterr().out
        alone = json.loads(one_out.read_text())
        assert {v: e[task] for v, e in sub.items()} == {v: e[task] for v, e in alone.items()}
        assert max(len(e[task]) for e in sub.values()) <= (15 if task == SND else 500)
        alone_metrics = json.loads((tmp_path / f"{task}_metrics.json").read_text())
        assert metrics["fusion"][task] == alone_metrics["fusion"]
        for r, ra in zip(metrics["runs"], alone_metrics["runs"]):
            assert r["metrics"][task] == ra["metrics"]
        fusion_table = alone_text.split(f"[RESULTS] fusion ({mode})\n")[1].split("[SUMMARY]")[0]
        assert f"[RESULTS] fusion ({mode}) {task}\n{fusion_table}" in text
    mean = np.mean([metrics["fusion"][t]["average_map"] for t in (ACT, SND)])
    assert metrics["average_map"] == pytest.approx(mean)
    assert f"[RESULTS] fusion ({mode}): Mean average mAP of 2 tasks" in text
    assert f"fusion {mean * 100:.2f}" in text.splitlines()[-2]
    # the per-task annotation files (challenge layout) score as the both-lists file
    assert fuse_main([*map(str, dirs), "--out", str(out), *opts, "--overwrite",
                      "--annotations", str(tmp_path / f"ann_{ACT}.json"),
                      "--annotations", str(tmp_path / f"ann_{SND}.json")]) == 0
    assert json.loads((tmp_path / "two_metrics.json").read_text()) == metrics
