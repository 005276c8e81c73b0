"""Tests of libs/evaluation/submission.py and tools/score_submission.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.common.errors import UserError
from libs.evaluation.metrics import evaluate_map
from libs.evaluation.events import GroundTruth, predictions_from_detections
from libs.evaluation.submission import (detections_to_submission, load_submission,
                                   load_submission_with_ids, write_json)

ROOT = Path(__file__).resolve().parents[2]
TASK = "sound_localisation"


def _dets():
    return [
        {"video_id": "a", "segments": torch.tensor([[0.5, 2.0], [1.0, 9.5], [3.0, 4.0]]),
         "scores": torch.tensor([0.2, 0.9, 0.1], dtype=torch.float32), "labels": torch.tensor([1, 0, 1])},
        {"video_id": "b", "segments": np.array([[0.0, 1.25]]), "scores": np.array([0.7], np.float32),
         "labels": np.array([2])},
    ]


def test_submission_format():
    sub = detections_to_submission(_dets(), TASK, ["a", "b", "c"], max_seg_num=2)
    assert list(sub) == ["a", "b", "c"]
    assert sub["c"] == {TASK: []}
    a = sub["a"][TASK]
    assert len(a) == 2                                     # cut to max_seg_num, descending score
    assert a[0] == {"label": "0", "score": repr(float(np.float32(0.9))), "timestamps": [1.0, 9.5]}
    assert a[1]["label"] == "1" and float(a[1]["score"]) == float(np.float32(0.2))
    with pytest.raises(ValueError, match="'z'"):
        detections_to_submission([dict(_dets()[1], video_id="z")], TASK, ["a"], 5)


def test_round_trip_gives_same_map(tmp_path):
    dets = _dets()
    gt = GroundTruth(np.array(["a", "a", "b"]), np.array([1.0, 0.0, 0.0]), np.array([9.0, 2.0, 1.0]),
                     np.array([0, 1, 2]))
    direct = evaluate_map(gt, predictions_from_detections(dets))
    path = tmp_path / "sub.json"
    write_json(detections_to_submission(dets, TASK, ["a", "b", "c"], 500), path)
    loaded, ids = load_submission_with_ids(path, TASK)
    assert ids == ["a", "b", "c"] and len(loaded) == 4
    again = evaluate_map(gt, loaded)
    np.testing.assert_array_equal(again.ap, direct.ap)
    assert again.average_map == direct.average_map


def test_write_json_refuses_overwrite(tmp_path):
    path = tmp_path / "out" / "x.json"
    write_json({"a": 1}, path)
    with pytest.raises(UserError, match=r"x\.json.*--overwrite"):
        write_json({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    write_json({"a": 3}, path, overwrite=True)
    assert json.loads(path.read_text()) == {"a": 3}
    assert os.listdir(path.parent) == ["x.json"]           # no temp files left


def test_unclipped_timestamps_are_read_as_given(tmp_path):
    # A detector that does not clip (ActionFormer's own output): the references score it as is.
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"v": {TASK: [{"label": "1", "score": "0.5",
                                              "timestamps": [-1.5, 99.0]}]}}))
    p = load_submission(path, TASK)
    assert p.t_start.tolist() == [-1.5] and p.t_end.tolist() == [99.0]


def test_numbers_as_strings_or_numbers(tmp_path):
    path = tmp_path / "s.json"
    entries = [{"label": 3, "score": 0.5, "timestamps": [1, 2]},
               {"label": "4", "score": "0.25", "timestamps": [0.5, 0.5]}]
    path.write_text(json.dumps({"v": {TASK: entries}}))
    p = load_submission(path, TASK)
    np.testing.assert_array_equal(p.labels, [3, 4])
    np.testing.assert_array_equal(p.scores, [0.5, 0.25])
    np.testing.assert_array_equal(p.t_start, [1.0, 0.5])


GOOD = {"label": "1", "score": "0.5", "timestamps": [1.0, 2.0]}
BAD_ENTRIES = [
    ({"score": "0.5", "timestamps": [1, 2]}, "missing label"),
    ({"label": "1", "timestamps": [1, 2]}, "missing score"),
    ({"label": "1", "score": "0.5"}, "missing timestamps"),
    (dict(GOOD, label="dog"), "label 'dog'"),
    (dict(GOOD, label=1.5), "label 1.5"),
    (dict(GOOD, label=-1), "label -1"),
    (dict(GOOD, score="high"), "score 'high'"),
    (dict(GOOD, score="nan"), "score 'nan'"),
    (dict(GOOD, score=None), "score None"),
    (dict(GOOD, timestamps=[1.0]), "timestamps"),
    (dict(GOOD, timestamps=["1", "2"]), "timestamps"),
    (dict(GOOD, timestamps=[3.0, 2.0]), "reversed"),
    (dict(GOOD, timestamps=[1.0, 1e400]), "not finite"),
    ("x", "is a str"),
]


@pytest.mark.parametrize("entry,what", BAD_ENTRIES)
def test_malformed_entry_names_video_and_entry(tmp_path, entry, what):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"vid_7": {TASK: [GOOD, entry]}}).replace("Infinity", "1e400"))
    with pytest.raises(UserError) as err:
        load_submission(path, TASK)
    msg = str(err.value)
    assert "bad.json" in msg and "video 'vid_7' entry 1" in msg and what in msg


@pytest.mark.parametrize("text,what", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level is a list"),
    (json.dumps({"vid_7": {"action_localisation": []}}), "video 'vid_7': missing 'sound_localisation'"),
    (json.dumps({"vid_7": [GOOD]}), "video 'vid_7': is a list"),
    (json.dumps({"vid_7": {TASK: GOOD}}), "video 'vid_7': 'sound_localisation' is a dict"),
])
def test_malformed_file(tmp_path, text, what):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match="bad.json") as err:
        load_submission(path, TASK)
    assert what in str(err.value)
    with pytest.raises(UserError, match="not found"):
        load_submission(tmp_path / "none.json", TASK)


# ---------------------------------------------------------------- tools/score_submission.py

def _annotations(path: Path) -> None:
    def ev(i, lid, s, e):
        return {"id": i, "label": f"class{lid}", "label_id": lid, "timestamps": [s * 1e6, e * 1e6]}
    def meta(split, n):
        return {"split": split, "num_frames": n, "frame_rate": 30.0}
    data = {
        "a": {"metadata": meta("valid", 300), TASK: [ev(0, 0, 1.0, 9.0), ev(1, 1, 0.0, 2.0)]},
        "b": {"metadata": meta("valid", 60), TASK: [ev(0, 2, 0.0, 1.0)]},
        "c": {"metadata": meta("valid", 60), TASK: []},
        "t": {"metadata": meta("train", 60), TASK: [ev(0, 3, 0.0, 1.0)]},
    }
    path.write_text(json.dumps(data))


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "score_submission.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_tool_scores_and_rejects(tmp_path):
    ann = tmp_path / "ann.json"
    _annotations(ann)
    good = tmp_path / "sub.json"
    sub = detections_to_submission(_dets(), TASK, ["a", "b"], 500)
    sub["zzz"] = {TASK: []}                                # not in the split: warned, ignored
    write_json(sub, good)
    out = tmp_path / "metrics.json"
    res = _run(ann, good, "--task", TASK, "--split", "valid", "--json", out)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "tIoU = 0.10: mAP = 100.00 (%)" in lines and "Average mAP: 100.00 (%)" in lines
    assert "not in split 'valid'" in res.stderr and "1 of 3 video(s)" in res.stderr
    metrics = json.loads(out.read_text())
    assert metrics["average_map"] == 1.0 and metrics["per_class"]["2"]["name"] == "class2"

    res = _run(ann, good, "--task", TASK, "--split", "valid", "--json", out)   # exists
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert _run(ann, good, "--task", TASK, "--split", "valid", "--json", out,
                "--overwrite").returncode == 0

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": {TASK: [{"label": "0", "score": "x", "timestamps": [0, 1]}]}}))
    res = _run(ann, bad, "--task", TASK, "--split", "valid")
    assert res.returncode == 2
    err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and "video 'a' entry 0" in err_lines[0]
    assert res.stdout == ""
