"""Annotation JSON parsing and validation (docs/numerics.md s.1.1)."""
import copy
import json

import numpy as np
import pytest

from libs.common.errors import UserError
from libs.datasets.annotations import load_annotations

TASK = "sound_localisation"


def _video(split="train", num_frames=900, frame_rate=30.0, events=None):
    if events is None:
        events = [{"id": 0, "label": "dog", "label_id": 1, "timestamps": [1_500_000, 3_250_000],
                   "is_visible": True}]
    return {"metadata": {"split": split, "num_frames": num_frames, "frame_rate": frame_rate},
            TASK: events, "action_localisation": []}


def _base():
    return {
        "v_a": _video(),
        "v_b": _video("valid", events=[
            {"label": "cat", "label_id": 0, "timestamps": [0, 2_000_000]},
            {"label": "dog", "label_id": 1, "timestamps": [4_000_000, 5_000_000]}]),
        "v_c": _video("test", events=[]),
    }


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_parse_duration_microseconds_and_label_names(tmp_path):
    path = _write(tmp_path, _base())
    ann = load_annotations(path, TASK, num_classes=3)
    assert [v.video_id for v in ann.videos] == ["v_a", "v_b", "v_c"]
    a = ann.videos[0]
    assert a.duration == 30.0  # 900 frames / 30 fps (the original multiplied: 27000)
    assert a.num_frames == 900 and a.frame_rate == 30.0 and a.split == "train"
    np.testing.assert_allclose(a.segments, [[1.5, 3.25]])
    assert a.segments.dtype == np.float64 and a.labels.dtype == np.int64
    assert a.labels.tolist() == [1]
    assert ann.label_names == {0: "cat", 1: "dog"}
    assert ann.videos[2].segments.shape == (0, 2) and ann.videos[2].num_events == 0


def test_split_filter_keeps_file_order_and_all_label_names(tmp_path):
    path = _write(tmp_path, _base())
    ann = load_annotations(path, TASK, 3, splits=["train", "test"])
    assert [v.video_id for v in ann.videos] == ["v_a", "v_c"]
    assert ann.label_names == {0: "cat", 1: "dog"}  # 'cat' only occurs in the valid video
    assert [v.video_id for v in load_annotations(path, TASK, 3, splits=["valid"]).videos] == ["v_b"]


def test_test_video_may_omit_task_list(tmp_path):
    data = _base()
    del data["v_c"][TASK]
    ann = load_annotations(_write(tmp_path, data), TASK, 3, splits=["test"])
    assert ann.videos[0].num_events == 0


def test_end_within_tolerance_is_clipped(tmp_path):
    data = _base()
    data["v_a"][TASK][0]["timestamps"] = [29_000_000, 30_600_000]
    ann = load_annotations(_write(tmp_path, data), TASK, 3, end_tolerance=1.0)
    np.testing.assert_allclose(ann.videos[0].segments, [[29.0, 30.0]])


def _mutate(fn):
    data = _base()
    fn(data)
    return data


def _set_ts(ts):
    return lambda d: d["v_a"][TASK][0].__setitem__("timestamps", ts)


ERROR_CASES = [
    ("missing_metadata", lambda d: d["v_a"].pop("metadata"), ["v_a", "metadata"]),
    ("missing_split", lambda d: d["v_a"]["metadata"].pop("split"), ["v_a", "split"]),
    ("missing_num_frames", lambda d: d["v_b"]["metadata"].pop("num_frames"), ["v_b", "num_frames"]),
    ("missing_frame_rate", lambda d: d["v_b"]["metadata"].pop("frame_rate"), ["v_b", "frame_rate"]),
    ("unknown_split", lambda d: d["v_a"]["metadata"].__setitem__("split", "training"),
     ["v_a", "unknown split 'training'"]),
    ("missing_task", lambda d: d["v_b"].pop(TASK), ["v_b", TASK]),
    ("label_not_int", lambda d: d["v_a"][TASK][0].__setitem__("label_id", "1"), ["v_a", "label_id"]),
    ("label_out_of_range", lambda d: d["v_a"][TASK][0].__setitem__("label_id", 3),
     ["v_a", "label_id 3 out of range", "[0, 3)"]),
    ("negative", _set_ts([-1_000_000, 2_000_000]), ["v_a", "negative"]),
    ("reversed", _set_ts([3_000_000, 2_000_000]), ["v_a", "reversed"]),
    ("zero_length", _set_ts([2_000_000, 2_000_000]), ["v_a", "zero-length"]),
    ("past_end", _set_ts([29_000_000, 31_500_000]), ["v_a", "past the video end"]),
    ("label_two_names", lambda d: d["v_b"][TASK][1].__setitem__("label", "wolf"),
     ["v_b", "label_id 1", "'wolf'", "'dog'"]),
    ("bad_timestamps", _set_ts([1]), ["v_a", "timestamps"]),
]


@pytest.mark.parametrize("name,fn,expected", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_annotation_errors_name_the_video(tmp_path, name, fn, expected):
    path = _write(tmp_path, _mutate(fn))
    with pytest.raises(UserError) as err:
        load_annotations(path, TASK, 3)
    msg = str(err.value)
    assert "\n" not in msg and path in msg
    for part in expected:
        assert part in msg, (part, msg)


@pytest.mark.parametrize("content,expected", [
    ("", "empty"),
    ("{not json", "not valid JSON"),
    ("{}", "no videos"),
    ("[1, 2]", "top level is a list"),
])
def test_file_level_errors(tmp_path, content, expected):
    path = _write(tmp_path, content)
    with pytest.raises(UserError, match=expected):
        load_annotations(path, TASK, 3)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="annotation file not found"):
        load_annotations(str(tmp_path / "nope.json"), TASK, 3)


def test_requested_split_absent_names_splits_found(tmp_path):
    data = _base()
    del data["v_c"]
    with pytest.raises(UserError) as err:
        load_annotations(_write(tmp_path, data), TASK, 3, splits=["test"])
    assert "split(s) test" in str(err.value) and "train, valid" in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    data = {}
    for i in range(25):
        v = _video()
        v[TASK][0]["label_id"] = 7
        data[f"vid_{i:02d}"] = v
    with pytest.raises(UserError) as err:
        load_annotations(_write(tmp_path, data), TASK, 3)
    msg = str(err.value)
    assert "25 problem(s)" in msg and msg.endswith("(and 5 more)")
    assert "vid_00" in msg and "vid_19" in msg and "vid_20" not in msg


def test_input_not_mutated(tmp_path):
    data = _base()
    before = copy.deepcopy(data)
    load_annotations(_write(tmp_path, data), TASK, 3)
    assert data == before
