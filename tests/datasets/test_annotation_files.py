"""Annotation files: several files merged by video id, strict reading (encoding, duplicate keys,
nesting), video ids that must be file names, conflicting label names, untrimmed loading."""
import json

import numpy as np
import pytest

from libs.common.errors import UserError
from libs.datasets.annotations import load_annotations

TASK = "sound_localisation"


def _video(split="train", events=None, num_frames=300, frame_rate=30.0):
    if events is None:
        events = [{"label": "dog", "label_id": 1, "timestamps": [1_000_000, 2_000_000]}]
    return {"metadata": {"split": split, "num_frames": num_frames, "frame_rate": frame_rate},
            TASK: events}


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def _error(path, **kw):
    with pytest.raises(UserError) as err:
        load_annotations(path, TASK, 3, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- several files

def test_per_split_files_are_merged_in_list_order(tmp_path):
    train = _write(tmp_path, {"t1": _video(), "t2": _video()}, "train.json")
    valid = _write(tmp_path, {"v1": _video("valid", [
        {"label": "cat", "label_id": 0, "timestamps": [0, 500_000]}])}, "valid.json")
    ann = load_annotations([train, valid], TASK, 3)
    assert [v.video_id for v in ann.videos] == ["t1", "t2", "v1"]
    assert ann.paths == [train, valid] and ann.splits_found == ["train", "valid"]
    assert ann.label_names == {0: "cat", 1: "dog"}       # names from every file
    only_valid = load_annotations((train, valid), TASK, 3, splits=["valid"])
    assert [v.video_id for v in only_valid.videos] == ["v1"]
    assert only_valid.label_names == {0: "cat", 1: "dog"}


def test_video_in_two_files_names_both_files(tmp_path):
    a = _write(tmp_path, {"x": _video(), "y": _video()}, "a.json")
    b = _write(tmp_path, {"x": _video()}, "b.json")
    msg = _error([a, b])
    assert f"video 'x' in two annotation files ({a} and {b})" in msg and "'y'" not in msg


def test_split_disagreement_between_files_names_both_splits(tmp_path):
    a = _write(tmp_path, {"x": _video("train")}, "a.json")
    b = _write(tmp_path, {"x": _video("valid")}, "b.json")
    msg = _error([a, b])
    assert a in msg and b in msg and "split 'train' there and 'valid' here" in msg


def test_same_file_listed_twice(tmp_path):
    a = _write(tmp_path, {"x": _video()})
    assert "annotation file listed twice" in _error([a, a])


def test_problems_of_several_files_name_their_file(tmp_path):
    a = _write(tmp_path, {"x": _video()}, "a.json")
    bad = _video("valid")
    bad[TASK][0]["label_id"] = 7
    b = _write(tmp_path, {"y": bad}, "b.json")
    msg = _error([a, b])
    assert f"invalid annotation files ({a}, {b}) with 1 problem(s)" in msg
    assert f"{b}: video 'y' event 0: label_id 7 out of range" in msg


# ----------------------------------------------------------------------------- strict reading

def test_non_utf8_byte_names_file_line_and_byte(tmp_path):
    text = json.dumps({"x": _video()}, indent=1).encode("utf-8")
    text = text.replace(b'"dog"', b'"d\xffg"')
    path = _write(tmp_path, text)
    msg = _error(path)
    line = text[:text.index(b"\xff")].count(b"\n") + 1
    assert msg.startswith(f"annotation file is not UTF-8 text ({path}): byte 0xff at line {line}")


def test_latin1_file_is_refused_and_bom_is_accepted(tmp_path):
    data = {"x": _video(events=[{"label": "café", "label_id": 0, "timestamps": [0, 10]}])}
    latin = _write(tmp_path, json.dumps(data, ensure_ascii=False).encode("latin-1"), "l.json")
    assert "not UTF-8" in _error(latin)
    bom = _write(tmp_path, b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode(), "b.json")
    assert load_annotations(bom, TASK, 3).label_names == {0: "café"}


def test_duplicate_video_id_in_one_file_is_found_while_parsing(tmp_path):
    one = json.dumps(_video())
    empty = json.dumps(_video(events=[]))
    # json.load would keep the second copy: video 'a' would train without events
    path = _write(tmp_path, f'{{"a": {one}, "b": {one}, "a": {empty}}}')
    msg = _error(path)
    assert msg.startswith(f"duplicate video id in annotation file ({path}): video 'a' 2 times")


def test_duplicate_key_inside_a_video_names_where(tmp_path):
    path = _write(tmp_path, '{"a": {"metadata": {"split": "train", "num_frames": 3, '
                            '"frame_rate": 1, "split": "valid"}, "sound_localisation": []}}')
    msg = _error(path)
    assert "duplicate key" in msg and "key 'split' 2 times in a.metadata" in msg


def test_deeply_nested_file_is_one_line(tmp_path):
    path = _write(tmp_path, '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert "nested too deeply" in _error(path)


@pytest.mark.parametrize("vid, why", [
    ("../../x", "contains '/'"), ("a/b", "contains '/'"), ("a\\b", "contains '\\\\'"),
    (".hidden", "starts with '.'"), ("..", "starts with '.'"), ("", "is empty"),
])
def test_video_ids_must_be_plain_file_names(tmp_path, vid, why):
    path = _write(tmp_path, {"ok": _video(), vid: _video()})
    msg = _error(path)
    assert path in msg and f"video id {vid!r} {why}" in msg and "'ok'" not in msg


# ----------------------------------------------------------------------------- label names

def test_conflicting_label_name_names_the_odd_video_and_both_names(tmp_path):
    dog = [{"label": "dog", "label_id": 1, "timestamps": [0, 1_000_000]}]
    wolf = [{"label": "wolf", "label_id": 1, "timestamps": [0, 1_000_000]}]
    data = {"v1": _video(events=dog), "v2": _video(events=dog), "odd": _video(events=wolf),
            "v3": _video(events=dog)}
    msg = _error(_write(tmp_path, data))
    problem = msg.split("problem(s): ", 1)[1]
    assert problem.startswith("video 'odd': label_id 1 named 'wolf', but 'dog' in 3 other video(s)")
    assert "'v2'" not in msg and "'v3'" not in msg


def test_conflicting_label_name_across_files_names_the_file(tmp_path):
    dog = [{"label": "dog", "label_id": 1, "timestamps": [0, 1_000_000]}]
    a = _write(tmp_path, {"v1": _video(events=dog), "v2": _video(events=dog)}, "a.json")
    b = _write(tmp_path, {"w": _video("valid", [dict(dog[0], label="hound")])}, "b.json")
    assert f"video 'w' ({b}): label_id 1 named 'hound', but 'dog'" in _error([a, b])


# ----------------------------------------------------------------------------- untrimmed

def test_untrimmed_keeps_events_as_given(tmp_path):
    data = {"x": _video(events=[{"label": "dog", "label_id": 1,
                                 "timestamps": [9_500_000, 13_000_000]},   # video is 10 s
                                {"label": "dog", "label_id": 1,
                                 "timestamps": [10_500_000, 11_000_000]}])}
    path = _write(tmp_path, data)
    assert "past the video end" in _error(path)
    ann = load_annotations(path, TASK, 3, trim=False)
    np.testing.assert_array_equal(ann.videos[0].segments, [[9.5, 13.0], [10.5, 11.0]])
    near = {"x": _video(events=[{"label": "dog", "label_id": 1, "timestamps": [9_000_000, 10_400_000]}])}
    path = _write(tmp_path, near, "near.json")
    np.testing.assert_array_equal(load_annotations(path, TASK, 3).videos[0].segments, [[9.0, 10.0]])
    np.testing.assert_array_equal(load_annotations(path, TASK, 3, trim=False).videos[0].segments,
                                  [[9.0, 10.4]])


# ----------------------------------------------------------------------------- command line

def test_bad_annotation_files_end_in_one_error_line(tmp_path):
    """Through a tool: one `error:` line naming the file and the culprit, exit 2, no traceback."""
    import os
    import subprocess
    import sys

    import yaml
    from datagen import tiny_config_dict, write_tiny_dataset

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    data = write_tiny_dataset(str(tmp_path / "d"))
    good = json.loads(open(data["annotation_file"], encoding="utf-8").read())
    vid = next(iter(good))
    one = json.dumps(good[vid])
    cases = {
        "dup.json": (f'{{"{vid}": {one}, ' + json.dumps(good)[1:]).encode(),
        "escape.json": json.dumps({**good, "../../etc/x": good[vid]}).encode(),
    }
    for name, content in cases.items():
        ann = tmp_path / name
        ann.write_bytes(content)
        cfg = tmp_path / f"{name}.yaml"
        raw = tiny_config_dict(data)
        raw["dataset"]["annotation_file"] = str(ann)
        cfg.write_text(yaml.safe_dump(raw))
        res = subprocess.run([sys.executable, os.path.join(root, "tools", "summarize_dataset.py"),
                              str(cfg)], capture_output=True, text=True, cwd=root, timeout=120,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert lines[0].startswith("error: ") and str(ann) in lines[0]
        culprit = f"video '{vid}' 2 times" if name == "dup.json" else "video id '../../etc/x'"
        assert culprit in lines[0]
