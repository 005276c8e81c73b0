"""Submissions of several tasks (a unified model): the writer, the reader, and
tools/score_submission.py / check_submission.py scoring several tasks in one call."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datagen import write_challenge_task_files
from libs.common.errors import UserError
from libs.config.tasks import TaskLayout
from libs.evaluation.events import predictions_from_detections
from libs.evaluation.submission import (detections_to_submission, detections_to_task_submission,
                                        read_submission, read_task_submission, write_json)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import score_submission  # noqa: E402

ACT, SND = "action_localisation", "sound_localisation"
LAYOUT = TaskLayout((ACT, SND), (4, 3))          # joint ids: actions 0..3, sounds 4..6


def _dets():
    return [
        {"video_id": "a", "segments": np.array([[0.5, 2.0], [1.0, 9.5], [3.0, 4.0], [0.0, 1.0],
                                                [2.0, 3.0]]),
         "scores": np.array([0.2, 0.9, 0.1, 0.8, 0.3], np.float32),
         "labels": np.array([1, 5, 3, 0, 6])},
        {"video_id": "b", "segments": np.array([[0.0, 1.25], [0.5, 1.0]]),
         "scores": np.array([0.7, 0.7], np.float32), "labels": np.array([4, 4])},
    ]


def _task_dets(dets, task):
    """One task's detections with task-local labels (the reference of the writer)."""
    lo, hi = LAYOUT.class_range(task)
    out = []
    for d in dets:
        keep = (d["labels"] >= lo) & (d["labels"] < hi)
        out.append({"video_id": d["video_id"], "segments": d["segments"][keep],
                    "scores": d["scores"][keep], "labels": d["labels"][keep] - lo})
    return out


def test_task_submission_has_every_list_with_local_labels():
    sub = detections_to_task_submission(_dets(), LAYOUT, ["a", "b", "c"], [2, 5])
    assert list(sub) == ["a", "b", "c"]
    assert all(list(v) == [ACT, SND] for v in sub.values())
    assert sub["c"] == {ACT: [], SND: []} and sub["b"][ACT] == []
    act = sub["a"][ACT]                    # joint 0, 1, 3 -> scores 0.8, 0.2, 0.1; cut to 2
    assert [e["label"] for e in act] == ["0", "1"]
    assert act[0] == {"label": "0", "score": repr(float(np.float32(0.8))), "timestamps": [0.0, 1.0]}
    assert [e["label"] for e in sub["a"][SND]] == ["1", "2"]          # joint 5, 6 -> local 1, 2
    assert [e["timestamps"] for e in sub["b"][SND]] == [[0.0, 1.25], [0.5, 1.0]]   # tie: stable
    for i, task in enumerate(LAYOUT.tasks):       # each list is the one-task writer's list
        one = detections_to_submission(_task_dets(_dets(), task), task, ["a", "b", "c"], [2, 5][i])
        assert {v: sub[v][task] for v in sub} == {v: one[v][task] for v in one}
    with pytest.raises(ValueError, match="'z'"):
        detections_to_task_submission([dict(_dets()[1], video_id="z")], LAYOUT, ["a"], [5, 5])


def test_one_task_is_the_one_task_writer():
    dets = [dict(d, labels=d["labels"] % 3) for d in _dets()]
    assert detections_to_task_submission(dets, TaskLayout.single(SND, 3), ["a", "b", "c"], [2]) \
        == detections_to_submission(dets, SND, ["a", "b", "c"], 2)


def test_reader_round_trip_and_problems(tmp_path):
    path = tmp_path / "sub.json"
    write_json(detections_to_task_submission(_dets(), LAYOUT, ["a", "b", "c"], [500, 500]), path)
    subs = read_task_submission(str(path), (ACT, SND))
    assert list(subs) == [ACT, SND]
    for task in (ACT, SND):
        ref = predictions_from_detections(_task_dets(_dets(), task))
        got = subs[task].predictions
        order = np.lexsort((ref.t_start, -ref.scores, ref.video_ids))
        for col in ("video_ids", "t_start", "t_end", "labels", "scores"):
            np.testing.assert_array_equal(np.sort(getattr(got, col)), np.sort(getattr(ref, col)[order]))
        assert subs[task].video_ids == ["a", "b", "c"]
        one = read_submission(str(path), task)          # the one-task reader agrees
        np.testing.assert_array_equal(one.predictions.scores, got.scores)
        assert one.entries == subs[task].entries
    assert read_task_submission(str(path), (SND,))[SND].entries == {"a": 2, "b": 2, "c": 0}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "a": {ACT: [], SND: [{"label": "0", "score": "x", "timestamps": [0, 1]}]},
        "b": {ACT: [{"label": "1", "score": 0.5, "timestamps": [2, 1]}]},
        "c": [],
    }))
    with pytest.raises(UserError) as err:
        read_task_submission(str(bad), (ACT, SND))
    msg = str(err.value)
    assert f"invalid submission ({bad}) with 4 problem(s)" in msg
    assert f"video 'a' '{SND}' entry 0: score 'x' is not a finite number" in msg
    assert f"video 'b' '{ACT}' entry 0: timestamps [2, 1] reversed" in msg
    assert f"video 'b': missing '{SND}' list (keys found: '{ACT}')" in msg
    assert "video 'c': is a list, expected a mapping {'action_localisation': [...], " \
           "'sound_localisation': [...]}" in msg


# ---------------------------------------------------------------- tools/score_submission.py

def _ev(i, lid, s, e):
    return {"id": i, "label": f"c{lid}", "label_id": int(lid), "timestamps": [s * 1e6, e * 1e6]}


def _dataset(tmp_path, seed=0, n_valid=8):
    """A both-lists annotation file (valid videos + 2 train, 1 test) and a noisy two-task
    submission of the valid videos (joint labels in LAYOUT). Returns (ann path, sub path)."""
    rng = np.random.default_rng(seed)
    ann, dets = {}, []
    for v in range(n_valid + 3):
        split = "valid" if v < n_valid else ("train" if v < n_valid + 2 else "test")
        vid = f"{split}{v}"
        entry = {"metadata": {"split": split, "num_frames": 600, "frame_rate": 30.0}}  # 20 s
        segs, scores, labels = [], [], []
        for _, task, offset, n in LAYOUT:
            k = int(rng.integers(1, 4))
            st, ln, lab = rng.uniform(0, 14, k), rng.uniform(1, 5, k), rng.integers(0, n, k)
            if split != "test":
                entry[task] = [_ev(i, lab[i], st[i], st[i] + ln[i]) for i in range(k)]
            jit = rng.normal(0, 0.6, (k, 2))
            fp = rng.uniform(0, 15, (4, 1)) + np.array([[0.0, 2.0]])
            segs += [np.stack([st, st + ln], 1) + jit, fp]
            scores += [rng.uniform(0.3, 1.0, k), rng.uniform(0.0, 0.6, 4)]
            labels += [lab + offset, rng.integers(0, n, 4) + offset]
        ann[vid] = entry
        if split == "valid":
            s = np.sort(np.concatenate(segs), axis=1)
            dets.append({"video_id": vid, "segments": s, "scores": np.concatenate(scores).astype(np.float32),
                         "labels": np.concatenate(labels)})
    a, sub = tmp_path / "ann.json", tmp_path / "sub.json"
    a.write_text(json.dumps(ann))
    write_json(detections_to_task_submission(dets, LAYOUT, [d["video_id"] for d in dets], [500, 500]),
               sub)
    return str(a), str(sub)


def _score(capsys, *args):
    assert score_submission.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_two_tasks_in_one_call_equal_each_task_alone(tmp_path, capsys):
    ann, sub = _dataset(tmp_path)
    both = _score(capsys, ann, sub, "--task", ACT, SND, "--split", "valid", "--json",
                  tmp_path / "both.json")
    alone = {t: _score(capsys, ann, sub, "--task", t, "--split", "valid", "--json",
                       tmp_path / f"{t}.json") for t in (ACT, SND)}
    assert both == alone[ACT] + alone[SND] + both.splitlines()[-1] + "\n"   # tables byte-identical
    report = json.loads((tmp_path / "both.json").read_text())
    single = {t: json.loads((tmp_path / f"{t}.json").read_text()) for t in (ACT, SND)}
    assert report["tasks"] == [ACT, SND]
    for t in (ACT, SND):
        assert report["per_task"][t] == {k: v for k, v in single[t].items() if k != "warnings"}
    mean = (single[ACT]["average_map"] + single[SND]["average_map"]) / 2
    assert report["average_map"] == mean and 0 < mean < 1
    a, s = single[ACT]["average_map"] * 100, single[SND]["average_map"] * 100
    assert both.splitlines()[-1] == (f"[RESULTS] Mean average mAP of 2 tasks ({ACT} {a:.2f}, "
                                     f"{SND} {s:.2f}): {mean * 100:.2f} (%)")
    # the other spellings of the task list, and --task before the positional arguments
    assert _score(capsys, ann, sub, "--task", f"{ACT},{SND}", "--split", "valid") == both
    assert _score(capsys, ann, sub, "--task", ACT, "--task", SND, "--split", "valid") == both
    assert _score(capsys, "--task", ACT, SND, "--split", "valid", ann, sub) == both
    assert _score(capsys, "--task", SND, ann, sub, "--split", "valid") == alone[SND]


def test_per_task_files_score_as_the_both_lists_file(tmp_path, capsys):
    ann, sub = _dataset(tmp_path, seed=1)
    both = _score(capsys, ann, sub, "--task", ACT, SND, "--split", "valid")
    files = write_challenge_task_files(ann, str(tmp_path / "challenge"), (ACT, SND))
    per_task = [files[ACT]["valid"], files[SND]["valid"]]
    assert _score(capsys, *per_task, sub, "--task", ACT, SND, "--split", "valid") == both
    assert _score(capsys, files[SND]["valid"], sub, "--task", SND, "--split", "valid") \
        == _score(capsys, ann, sub, "--task", SND, "--split", "valid")
    with pytest.raises(UserError, match=f"video 'valid0': missing '{SND}' list"):   # no sound file
        score_submission.main([files[ACT]["valid"], sub, "--task", ACT, SND, "--split", "valid"])


def test_num_classes_per_task(tmp_path, capsys):
    ann, sub = _dataset(tmp_path, seed=2)
    ok = _score(capsys, ann, sub, "--task", ACT, SND, "--split", "valid")
    assert _score(capsys, ann, sub, "--task", ACT, SND, "--split", "valid", "--num-classes",
                  f"{ACT}=4,{SND}=3") == ok
    assert _score(capsys, ann, sub, "--task", ACT, SND, "--split", "valid", "--num-classes",
                  f"{ACT}=4", "--num-classes", f"{SND}=3") == ok
    data = json.loads(Path(sub).read_text())
    data["valid0"][SND].append({"label": "3", "score": "0.01", "timestamps": [0.0, 1.0]})
    Path(sub).write_text(json.dumps(data))
    with pytest.raises(UserError) as err:           # sound label 3 is out of [0, 3)
        score_submission.main([ann, sub, "--task", ACT, SND, "--split", "valid", "--num-classes",
                               f"{SND}=3"])
    assert f"{SND}: 1 prediction(s) with label ids [3] outside [0, 3), video(s) valid0" \
        in str(err.value) and ACT not in str(err.value)
    for bad, needle in (("3", "expected TASK=N for each of the tasks"),
                        ("frobnicate=3", "'frobnicate' is not a task of --task"),
                        (f"{ACT}=0", "expected an int >= 1"),
                        (f"{ACT}=4,{ACT}=5", f"a second value for {ACT}")):
        with pytest.raises(UserError, match=needle):
            score_submission.main([ann, sub, "--task", ACT, SND, "--split", "valid",
                                   "--num-classes", bad])
    with pytest.raises(UserError, match=f"{SND} given twice"):
        score_submission.main([ann, sub, "--task", SND, f"{SND},{ACT}", "--split", "valid"])


def _tool(*args, tool="check_submission.py"):
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_check_two_tasks(tmp_path):
    ann = tmp_path / "ann.json"
    meta = {"split": "test", "num_frames": 300, "frame_rate": 30.0}
    ann.write_text(json.dumps({"t1": {"metadata": meta}, "t2": {"metadata": meta}}))
    entry = {"label": "62", "score": "0.5", "timestamps": [0.0, 1.0]}
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"t1": {ACT: [entry], SND: []}, "t2": {ACT: [], SND: []}}))
    res = _tool(ann, sub, "--task", ACT, SND, "--split", "test")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"submission OK ({sub}): all 2 videos of split 'test', 1 entries of '{ACT}' (at most 1 per "
        f"video, limit 500), labels in [0, 63); 0 entries of '{SND}' (at most 0 per video, limit "
        "500), labels in [0, 12), finite scores"]
    sub.write_text(json.dumps({"t1": {ACT: [], SND: [entry]}, "t2": {ACT: []}}))
    with pytest.raises(UserError) as err:
        score_submission.main([str(ann), str(sub), "--task", ACT, SND, "--split", "test", "--check"])
    assert f"video 't2': missing '{SND}' list" in str(err.value)
    sub.write_text(json.dumps({"t1": {ACT: [entry] * 3, SND: [dict(entry, label="2")] * 3},
                               "t2": {ACT: [], SND: []}}))
    with pytest.raises(UserError) as err:
        score_submission.main([str(ann), str(sub), "--task", ACT, SND, "--split", "test", "--check",
                               "--max-seg-num", f"{SND}=2"])
    assert str(err.value).endswith(f"{SND}: 1 video(s) with more than 2 entries (up to 3): t1")
    res = _tool(ann, sub, "--task", ACT, SND, "--split", "test", "--num-classes", f"{ACT}=10")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{ACT}: 3 prediction(s) with label ids [62] outside [0, 10)" in lines[0]
