"""tools/score_submission.py and tools/check_submission.py against the challenge's evaluators
(ActivityNet ANETdetection, the Perception Test ActionFormer fork): one hand-computed case per
policy (docs/numerics.md s.8.6, docs/differences.md s.4)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libs.common.errors import UserError
from libs.evaluation.challenge import CHALLENGE_TIOU_THRESHOLDS
from libs.evaluation.metrics import evaluate_map
from libs.evaluation.events import GroundTruth, Predictions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import score_submission  # noqa: E402

TASK = "sound_localisation"


def ev(lid, s, e):
    return {"label": f"class{lid}", "label_id": lid, "timestamps": [s * 1e6, e * 1e6]}


def video(split, events, num_frames=300):           # 300 frames at 30 fps: 10 s
    return {"metadata": {"split": split, "num_frames": num_frames, "frame_rate": 30.0}, TASK: events}


def entry(lid, s, e, score):
    return {"label": str(lid), "score": str(score), "timestamps": [s, e]}


def files(tmp_path, ann, sub):
    a, s = tmp_path / "ann.json", tmp_path / "sub.json"
    a.write_text(json.dumps(ann))
    s.write_text(sub if isinstance(sub, str) else json.dumps({v: {TASK: e} for v, e in sub.items()}))
    return str(a), str(s)


def score(tmp_path, ann, sub, *extra, split="valid"):
    """Average mAP (%) and per-threshold lines printed by the tool, run in this process."""
    a, s = files(tmp_path, ann, sub)
    assert score_submission.main([a, s, "--task", TASK, "--split", split, *extra]) == 0
    return a, s


def table(capsys):
    out = capsys.readouterr().out.splitlines()
    return {ln.split(":")[0]: ln.split("=")[-1].strip() for ln in out if ln.startswith("tIoU")}, \
        [ln for ln in out if ln.startswith("Average mAP")][0]


def test_thresholds_are_linspace_exactly():
    assert CHALLENGE_TIOU_THRESHOLDS == tuple(np.linspace(0.1, 0.5, 5))
    assert CHALLENGE_TIOU_THRESHOLDS[2] == 0.30000000000000004


def test_a_tiou_of_exactly_0_3_misses_the_third_threshold(tmp_path, capsys):
    # pred [0, 3] vs gt [0, 10]: tIoU = 3/10 = 0.3 < 0.30000000000000004 -> TP at 0.1, 0.2 only:
    # AP = [1, 1, 0, 0, 0], average 40 % (the literal 0.3 would give 60 %).
    score(tmp_path, {"a": video("valid", [ev(0, 0, 10)])}, {"a": [entry(0, 0.0, 3.0, 0.9)]})
    rows, avg = table(capsys)
    assert rows["tIoU = 0.20"] == "100.00 (%)" and rows["tIoU = 0.30"] == "0.00 (%)"
    assert avg == "Average mAP: 40.00 (%)"
    gt = GroundTruth(["a"], [0.0], [10.0], [0])
    pr = Predictions(["a"], [0.0], [3.0], [0], [0.9])
    assert evaluate_map(gt, pr, (0.1, 0.2, 0.3, 0.4, 0.5)).average_map == pytest.approx(0.6)


def test_ground_truth_as_given_and_unclipped_predictions(tmp_path, capsys, caplog):
    # gt [8, 10.9] of a 10 s video (within end_tolerance: training clips it to [8, 10]);
    # pred [10, 10.9]: as given, tIoU = 0.9 / 2.9 = 0.310 -> TP at 0.1, 0.2, 0.3: 60 %.
    # (against the clipped [8, 10] the tIoU is 0 and the mAP 0 %.)
    with caplog.at_level(logging.WARNING):
        score(tmp_path, {"a": video("valid", [ev(0, 8, 10.9)])}, {"a": [entry(0, 10.0, 10.9, 0.9)]})
    rows, avg = table(capsys)
    assert rows["tIoU = 0.30"] == "100.00 (%)" and rows["tIoU = 0.40"] == "0.00 (%)"
    assert avg == "Average mAP: 60.00 (%)"
    assert "1 prediction(s) start before 0 s or end after their video; scored as they are" in caplog.text


def test_negative_start_is_scored_as_it_is(tmp_path, capsys):
    # pred [-1, 4] vs gt [0, 4]: tIoU 4/5 = 0.8 -> TP everywhere.
    score(tmp_path, {"a": video("valid", [ev(0, 0, 4)])}, {"a": [entry(0, -1.0, 4.0, 0.9)]})
    assert table(capsys)[1] == "Average mAP: 100.00 (%)"


@pytest.mark.parametrize("outside", ["zzz", "t"])      # unknown video / a video of another split
def test_videos_outside_the_split_are_false_positives(tmp_path, capsys, caplog, outside):
    # the outside prediction scores higher: tp = [0, 1], prec = [0, 1/2], rec = [0, 1] -> AP 50 %.
    ann = {"a": video("valid", [ev(0, 0, 10)]), "t": video("train", [ev(0, 0, 10)])}
    with caplog.at_level(logging.WARNING):
        score(tmp_path, ann, {"a": [entry(0, 0, 10, 0.5)], outside: [entry(0, 0, 10, 0.9)]})
    assert table(capsys)[1] == "Average mAP: 50.00 (%)"
    assert ("1 video(s) of the submission are not in split 'valid'; their 1 prediction(s) count "
            "as false positives") in caplog.text and outside in caplog.text


def test_class_without_ground_truth_counts_against_nothing(tmp_path, capsys, caplog):
    # GT classes {1, 2}. The fork remaps 1 -> 0, 2 -> 1 and leaves the prediction of class 0 as
    # 0, i.e. scores it as class 1: a higher-scored FP, class-1 AP 0.5, mAP 75 %. Ours: 100 %.
    ann = {"a": video("valid", [ev(1, 0, 10)]), "b": video("valid", [ev(2, 0, 5)])}
    sub = {"a": [entry(0, 0, 10, 0.9), entry(1, 0, 10, 0.5)], "b": [entry(2, 0, 5, 0.5)]}
    with caplog.at_level(logging.WARNING):
        score(tmp_path, ann, sub)
    assert table(capsys)[1] == "Average mAP: 100.00 (%)"
    assert "1 prediction(s) of class(es) [0] without ground truth in split 'valid' count against " \
           "nothing" in caplog.text


def test_duplicate_video_keeps_the_last_copy_as_json_does(tmp_path, capsys, caplog):
    one, two = json.dumps([entry(0, 50, 60, 0.9)]), json.dumps([entry(0, 0, 10, 0.9)])
    text = f'{{"a": {{"{TASK}": {one}}}, "a": {{"{TASK}": {two}}}}}'
    with caplog.at_level(logging.WARNING):
        score(tmp_path, {"a": video("valid", [ev(0, 0, 10)])}, text)
    assert table(capsys)[1] == "Average mAP: 100.00 (%)"
    assert "1 video id(s) written more than once (the last copy is scored" in caplog.text


STRICT = [
    ("outside video", {"a": [entry(0, 0, 12, 0.9)]}, "end after their video"),
    ("outside split", {"a": [entry(0, 0, 10, 0.9)], "zzz": []}, "not in split 'valid'"),
    ("no ground truth", {"a": [entry(0, 0, 10, 0.9), entry(5, 0, 1, 0.1)]},
     "class(es) [5] without ground truth"),
    ("missing video", {}, "1 of 1 video(s) of split 'valid' are missing"),
]


@pytest.mark.parametrize("name, sub, needle", STRICT, ids=[s[0] for s in STRICT])
def test_strict_turns_each_warning_into_an_error(tmp_path, name, sub, needle):
    a, s = files(tmp_path, {"a": video("valid", [ev(0, 0, 10)])}, sub)
    assert score_submission.main([a, s, "--task", TASK, "--split", "valid"]) == 0
    with pytest.raises(UserError) as err:
        score_submission.main([a, s, "--task", TASK, "--split", "valid", "--strict"])
    assert needle in str(err.value) and s in str(err.value)


def _tool(*args, tool="score_submission.py"):
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _one_line_error(res):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_label_outside_num_classes_is_an_error(tmp_path):
    a, s = files(tmp_path, {"a": video("valid", [ev(0, 0, 10)])},
                 {"a": [entry(0, 0, 10, 0.9), entry(99, 0, 10, 0.5)]})
    line = _one_line_error(_tool(a, s, "--task", TASK, "--split", "valid", "--num-classes", "12"))
    assert "label ids [99] outside [0, 12)" in line and "video(s) a" in line and s in line
    assert score_submission.main([a, s, "--task", TASK, "--split", "valid"]) == 0   # no K: a warning


# ----------------------------------------------------------------------------- upload check

def _test_split():
    return {"t1": video("test", []), "t2": video("test", []), "v": video("valid", [ev(0, 0, 1)])}


GOOD = {"t1": [entry(3, 0.5, 2.0, 0.9)], "t2": []}


def test_check_accepts_a_valid_submission_with_one_line(tmp_path):
    a, s = files(tmp_path, _test_split(), GOOD)
    res = _tool(a, s, "--task", TASK, "--split", "test", tool="check_submission.py")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"submission OK ({s}): all 2 videos of split 'test', 1 entries of '{TASK}' (at most 1 per "
        "video, limit 500), labels in [0, 12), finite scores"]
    assert score_submission.main([a, s, "--task", TASK, "--split", "test", "--check"]) == 0


CHECK_ERRORS = [
    ("missing video", {"t1": []}, [], "1 of 2 video(s) of split 'test' are missing"),
    ("extra video", dict(GOOD, v=[]), [], "1 video(s) of the submission are not in split 'test'"),
    ("label range", {"t1": [entry(12, 0, 1, 0.5)], "t2": []}, [], "label ids [12] outside [0, 12)"),
    ("label range K", {"t1": [entry(4, 0, 1, 0.5)], "t2": []}, ["--num-classes", "4"],
     "label ids [4] outside [0, 4)"),
    ("too many", {"t1": [entry(0, 0, 1, 0.5)] * 3, "t2": []}, ["--max-seg-num", "2"],
     "1 video(s) with more than 2 entries (up to 3): t1"),
    ("nan score", {"t1": [entry(0, 0, 1, "nan")], "t2": []}, [], "score 'nan' is not a finite number"),
    ("task key", '{"t1": {"action_localisation": []}, "t2": {"sound_localisation": []}}', [],
     "video 't1': missing 'sound_localisation' list"),
    ("duplicate", '{"t1": {"sound_localisation": []}, "t2": {"sound_localisation": []}, '
                  '"t1": {"sound_localisation": []}}', [], "1 video id(s) written more than once"),
    ("outside video, strict", {"t1": [entry(0, -0.5, 1, 0.5)], "t2": []}, ["--strict"],
     "start before 0 s"),
]


@pytest.mark.parametrize("name, sub, extra, needle", CHECK_ERRORS, ids=[c[0] for c in CHECK_ERRORS])
def test_check_refuses_what_the_upload_would_not_take(tmp_path, name, sub, extra, needle):
    a, s = files(tmp_path, _test_split(), sub)
    with pytest.raises(UserError) as err:
        score_submission.main([a, s, "--task", TASK, "--split", "test", "--check", *extra])
    assert needle in str(err.value) and s in str(err.value)


def test_check_warns_about_unclipped_predictions(tmp_path, capsys, caplog):
    a, s = files(tmp_path, _test_split(), {"t1": [entry(0, -0.5, 1, 0.5)], "t2": []})
    with caplog.at_level(logging.WARNING):
        assert score_submission.main([a, s, "--task", TASK, "--split", "test", "--check"]) == 0
    assert "start before 0 s" in caplog.text
    assert capsys.readouterr().out.rstrip().endswith("; 1 warning(s)")


def test_check_with_one_line_error_on_the_command_line(tmp_path):
    a, s = files(tmp_path, _test_split(), {"t1": []})
    line = _one_line_error(_tool(a, s, "--task", TASK, "--split", "test", tool="check_submission.py"))
    assert line.startswith(f"error: submission not ready for upload ({s}, split 'test')")
