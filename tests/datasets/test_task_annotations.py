"""Annotations of several tasks (libs/datasets/task_annotations.py): both-lists files and the
challenge's per-task files merged by video id, the joint label space, missing task lists, the
per-task view."""
import json
import logging

import numpy as np
import pytest

from datagen import write_challenge_task_files, write_tiny_dataset
from libs.common.errors import UserError
from libs.config.tasks import TaskLayout
from libs.datasets.annotations import AnnotationSet, VideoRecord, load_annotations
from libs.datasets.task_annotations import load_task_annotations, task_records

ACT, SND = "action_localisation", "sound_localisation"
TASKS = (ACT, SND)
COUNTS = (4, 3)                     # joint ids: actions 0..3, sounds 4..6
LAYOUT = TaskLayout(TASKS, COUNTS)


def _ev(lid, start_s, end_s, name=None):
    return {"label": name or f"c{lid}", "label_id": lid,
            "timestamps": [int(start_s * 1e6), int(end_s * 1e6)]}


def _meta(split="train", num_frames=300, frame_rate=30.0):
    return {"split": split, "num_frames": num_frames, "frame_rate": frame_rate}


def _video(split="train", act=None, snd=None, **meta):
    entry = {"metadata": _meta(split, **meta)}
    if act is not None:
        entry[ACT] = act
    if snd is not None:
        entry[SND] = snd
    return entry


def _both():
    """Three videos: train with both lists, valid with both, test without lists."""
    return {"a": _video(act=[_ev(3, 1, 2), _ev(0, 4, 6)], snd=[_ev(2, 0.5, 1.5, "dog")]),
            "b": _video("valid", act=[_ev(1, 2, 3)], snd=[_ev(0, 3, 4), _ev(2, 5, 9, "dog")]),
            "t": _video("test")}


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def _split_tasks(data):
    """The both-lists mapping as two per-task mappings (metadata in both)."""
    out = {}
    for task in TASKS:
        out[task] = {vid: {"metadata": dict(e["metadata"]),
                           **({task: e[task]} if task in e else {})} for vid, e in data.items()}
    return out


def _error(paths, **kw):
    with pytest.raises(UserError) as err:
        load_task_annotations(paths, TASKS, COUNTS, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_both_lists_file_gives_joint_labels_task_by_task(tmp_path):
    ann = load_task_annotations(_write(tmp_path, _both()), TASKS, COUNTS)
    assert [v.video_id for v in ann.videos] == ["a", "b", "t"]
    a = ann.videos[0]
    np.testing.assert_allclose(a.segments, [[1, 2], [4, 6], [0.5, 1.5]])   # actions, then sounds
    assert a.labels.tolist() == [3, 0, 4 + 2] and a.labels.dtype == np.int64
    assert ann.videos[1].labels.tolist() == [1, 4, 6]
    assert a.annotated == (True, True) and ann.videos[2].annotated == (True, True)
    assert ann.videos[2].segments.shape == (0, 2) and ann.videos[2].num_events == 0
    assert ann.tasks == TASKS and ann.task == "action_localisation+sound_localisation"
    assert ann.task_label_names == {ACT: {0: "c0", 1: "c1", 3: "c3"}, SND: {0: "c0", 2: "dog"}}
    assert ann.label_names == {0: "c0", 1: "c1", 3: "c3", 4: "c0", 6: "dog"}
    assert ann.splits_found == ["train", "valid", "test"]


def test_challenge_layout_equals_both_lists_file(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 5, "valid": 3, "test": 2},
                              events_per_video=(0, 4), seed=3)
    files = write_challenge_task_files(data["annotation_file"], str(tmp_path / "c"), TASKS)
    per_task = [files[t][s] for t in TASKS for s in ("train", "valid", "test")]
    both = load_task_annotations(data["annotation_file"], TASKS, (3, 3))
    merged = load_task_annotations(per_task, TASKS, (3, 3))
    assert merged.paths == per_task
    assert [v.video_id for v in merged.videos] == [v.video_id for v in both.videos]
    assert len(both.videos) == 10 and sum(v.num_events for v in both.videos) > 10
    for m, b in zip(merged.videos, both.videos):
        assert (m.split, m.num_frames, m.frame_rate, m.duration, m.annotated) == \
               (b.split, b.num_frames, b.frame_rate, b.duration, b.annotated)
        np.testing.assert_array_equal(m.segments, b.segments)
        np.testing.assert_array_equal(m.labels, b.labels)
    assert merged.label_names == both.label_names
    assert merged.task_label_names == both.task_label_names
    only = load_task_annotations(per_task, TASKS, (3, 3), splits=["valid"])
    assert [v.split for v in only.videos] == ["valid"] * 3


def test_metadata_disagreement_names_both_files_and_the_field(tmp_path):
    parts = _split_tasks(_both())
    parts[SND]["b"]["metadata"]["num_frames"] = 301
    a, s = _write(tmp_path, parts[ACT], "act.json"), _write(tmp_path, parts[SND], "snd.json")
    msg = _error([a, s])
    assert (f"video 'b': metadata.num_frames is 300 in {a} but 301 in {s}, expected the same "
            "metadata in every annotation file") in msg
    assert "with 1 problem(s)" in msg            # no second "missing list" problem for 'b'
    parts[SND]["b"]["metadata"]["num_frames"] = 300
    parts[SND]["a"]["metadata"]["split"] = "valid"
    msg = _error([a, _write(tmp_path, parts[SND], "snd.json")])
    assert f"metadata.split is 'train' in {a} but 'valid' in {s}" in msg


def test_same_task_list_in_two_files_names_both(tmp_path):
    both = _write(tmp_path, _both(), "both.json")
    snd = _write(tmp_path, _split_tasks(_both())[SND], "snd.json")
    msg = _error([both, snd])
    assert (f"video 'a': 'sound_localisation' list in two annotation files ({both} and {snd}), "
            "expected each task's list in one file") in msg
    assert "'action_localisation' list" not in msg


def test_missing_task_list_is_an_error_naming_video_task_and_files(tmp_path):
    parts = _split_tasks(_both())
    del parts[SND]["b"][SND]
    a, s = _write(tmp_path, parts[ACT], "act.json"), _write(tmp_path, parts[SND], "snd.json")
    msg = _error([a, s])
    assert (f"video 'b': missing 'sound_localisation' list (split valid) in {a}, {s}, expected a "
            "list of events in one of the files") in msg
    assert "dataset.allow_missing_task" in msg and "with 1 problem(s)" in msg
    # a video only in the action file lacks its sound list too
    parts[ACT]["x"] = _video(act=[_ev(0, 1, 2)])
    msg = _error([_write(tmp_path, parts[ACT], "act.json"), s])
    assert f"video 'x': missing 'sound_localisation' list (split train) in {a}, expected" in msg


def test_allow_missing_task_keeps_the_video_unannotated_and_logs_counts(tmp_path, caplog):
    data = _both()
    del data["b"][SND]
    data["c"] = _video(snd=[_ev(1, 1, 2)])                 # no action list
    data["d"] = _video()                                    # no list at all
    path = _write(tmp_path, data)
    with caplog.at_level(logging.INFO, logger="libs.datasets.task_annotations"):
        ann = load_task_annotations(path, TASKS, COUNTS, allow_missing_task=True)
    flags = {v.video_id: v.annotated for v in ann.videos}
    assert flags == {"a": (True, True), "b": (True, False), "t": (True, True),
                     "c": (False, True), "d": (False, False)}
    b = ann.videos[1]
    assert b.labels.tolist() == [1] and b.is_annotated(0) and not b.is_annotated(1)
    assert ann.videos[3].labels.tolist() == [4 + 1]
    lines = [r for r in caplog.records if "videos without a" in r.getMessage()]
    assert [r.getMessage().split(": ", 1)[1] for r in lines] == [
        "2 of 5 videos without a 'action_localisation' list (dataset.allow_missing_task): that "
        "task gives no loss for them",
        "2 of 5 videos without a 'sound_localisation' list (dataset.allow_missing_task): that "
        "task gives no loss for them"]
    assert all(r.levelno == logging.WARNING for r in lines)
    # counts are over the returned videos
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="libs.datasets.task_annotations"):
        load_task_annotations(path, TASKS, COUNTS, splits=["valid"], allow_missing_task=True)
    counts = [r.getMessage() for r in caplog.records if "videos without a" in r.getMessage()]
    assert "0 of 1 videos without a 'action_localisation'" in counts[0]
    assert "1 of 1 videos without a 'sound_localisation'" in counts[1]
    assert [r.levelno for r in caplog.records if "videos without a" in r.getMessage()] == \
           [logging.INFO, logging.WARNING]


def test_test_videos_may_omit_lists_in_the_challenge_layout(tmp_path):
    parts = _split_tasks(_both())
    parts[ACT]["t2"] = _video("test", act=[])          # the sound file does not have 't2' at all
    ann = load_task_annotations([_write(tmp_path, parts[ACT], "a.json"),
                                 _write(tmp_path, parts[SND], "s.json")], TASKS, COUNTS,
                                splits=["test"])
    assert [(v.video_id, v.num_events, v.annotated) for v in ann.videos] == [
        ("t", 0, (True, True)), ("t2", 0, (True, True))]


def test_label_ids_are_checked_against_each_tasks_own_count(tmp_path):
    data = _both()
    data["a"][ACT].append(_ev(3, 7, 8))                  # fine: actions have 4 classes
    data["a"][SND].append(_ev(3, 7, 8))                  # sounds have 3
    data["b"][ACT].append(_ev(4, 7, 8))
    msg = _error(_write(tmp_path, data))
    assert "with 2 problem(s)" in msg
    assert ("sound_localisation: video 'a' event 1: label_id 3 out of range, expected an int in "
            "[0, 3)") in msg
    assert ("action_localisation: video 'b' event 1: label_id 4 out of range, expected an int in "
            "[0, 4)") in msg
    # with several files each problem also names its file
    parts = _split_tasks(data)
    a, s = _write(tmp_path, parts[ACT], "act.json"), _write(tmp_path, parts[SND], "snd.json")
    assert f"{s}: sound_localisation: video 'a' event 1: label_id 3 out of range" in _error([a, s])


def test_label_names_are_per_task(tmp_path):
    data = _both()
    data["a"][ACT][0]["label"] = "dog"                   # action 3 'dog' vs sound 2 'dog': fine
    ann = load_task_annotations(_write(tmp_path, data), TASKS, COUNTS)
    assert ann.task_label_names[ACT][3] == "dog" and ann.label_names[3] == "dog"
    data["b"][SND][1]["label"] = "cat"                   # sound 2: 'dog' in a, 'cat' in b
    msg = _error(_write(tmp_path, data))
    assert "sound_localisation: video 'b': label_id 2 named 'cat', but 'dog'" in msg


def test_other_problems_of_one_entry(tmp_path):
    data = _both()
    data["a"][SND] = {"oops": 1}
    data["b"][ACT][0]["timestamps"] = [3_000_000, 2_000_000]
    data["../x"] = _video(act=[], snd=[])
    msg = _error(_write(tmp_path, data))
    assert "video 'a': 'sound_localisation' is a dict, expected a list" in msg
    assert "action_localisation: video 'b': reversed timestamps (start > end) [3, 2] s" in msg
    assert "video id '../x' contains '/'" in msg
    with pytest.raises(UserError, match="no video of split.s. valid in the annotation file"):
        load_task_annotations(_write(tmp_path, {"a": _both()["a"]}), TASKS, COUNTS,
                              splits=["valid"])
    a = _write(tmp_path, _both())
    assert "annotation file listed twice" in _error([a, a])


def test_trim_and_untrimmed_per_task(tmp_path):
    data = _both()
    data["a"][SND][0]["timestamps"] = [9_000_000, 10_500_000]   # video is 10 s long
    path = _write(tmp_path, data)
    trimmed = load_task_annotations(path, TASKS, COUNTS).videos[0]
    np.testing.assert_allclose(trimmed.segments[2], [9.0, 10.0])
    raw = load_task_annotations(path, TASKS, COUNTS, trim=False).videos[0]
    np.testing.assert_allclose(raw.segments[2], [9.0, 10.5])


def test_task_records_round_trip_equals_loading_that_task_alone(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 6, "valid": 3, "test": 1},
                              events_per_video=(0, 4), seed=7)
    path = data["annotation_file"]
    layout = TaskLayout(TASKS, (3, 3))
    joint = load_task_annotations(path, TASKS, (3, 3), splits=["train", "valid"])
    for task in TASKS:
        alone = load_annotations(path, task, 3, splits=["train", "valid"])
        view = task_records(joint.videos, layout, task)
        assert [v.video_id for v in view] == [v.video_id for v in alone.videos]
        for v, w in zip(view, alone.videos):
            assert (v.split, v.num_frames, v.frame_rate, v.duration, v.annotated) == \
                   (w.split, w.num_frames, w.frame_rate, w.duration, w.annotated)
            np.testing.assert_array_equal(v.segments, w.segments)
            np.testing.assert_array_equal(v.labels, w.labels)
            assert v.labels.dtype == np.int64 and v.segments.shape == w.segments.shape
        assert joint.task_label_names[task] == alone.label_names


def test_task_records_leaves_out_unannotated_videos_unless_asked(tmp_path):
    data = _both()
    del data["b"][SND]
    ann = load_task_annotations(_write(tmp_path, data), TASKS, COUNTS, allow_missing_task=True)
    snd = task_records(ann.videos, LAYOUT, SND)
    assert [v.video_id for v in snd] == ["a", "t"]
    assert snd[0].labels.tolist() == [2] and snd[0].annotated == ()
    every = task_records(ann.videos, LAYOUT, SND, annotated_only=False)
    assert [(v.video_id, v.annotated, v.num_events) for v in every] == [
        ("a", (), 1), ("b", (False,), 0), ("t", (), 0)]
    act = task_records(ann.videos, LAYOUT, ACT)
    assert [v.labels.tolist() for v in act] == [[3, 0], [1], []]
    assert ann.videos[0].labels.tolist() == [3, 0, 6]          # the joint records are unchanged


def test_one_task_is_load_annotations(tmp_path):
    path = _write(tmp_path, _both())
    one = load_task_annotations(path, [SND], [3], splits=["train", "valid"], end_tolerance=0.5)
    ref = load_annotations(path, SND, 3, splits=["train", "valid"], end_tolerance=0.5)
    assert (one.paths, one.task, one.label_names, one.splits_found, one.tasks,
            one.task_label_names) == (ref.paths, ref.task, ref.label_names, ref.splits_found,
                                      (SND,), {SND: ref.label_names})
    for v, w in zip(one.videos, ref.videos, strict=True):
        assert (v.video_id, v.annotated) == (w.video_id, ()) and v.is_annotated(0)
        np.testing.assert_array_equal(v.segments, w.segments)
        np.testing.assert_array_equal(v.labels, w.labels)
    assert task_records(one.videos, TaskLayout.single(SND, 3), SND) == one.videos
    data = _both()
    del data["a"][SND]
    bad = _write(tmp_path, data, "bad.json")
    with pytest.raises(UserError) as a:
        load_annotations(bad, SND, 3)
    with pytest.raises(UserError) as b:
        load_task_annotations(bad, [SND], [3])
    assert str(a.value) == str(b.value) and "missing 'sound_localisation' list" in str(a.value)


def test_records_built_elsewhere_count_as_annotated():
    v = VideoRecord("x", "valid", 30, 30.0, 1.0, np.zeros((0, 2)), np.zeros(0, np.int64))
    assert v.annotated == () and v.is_annotated(0) and v.is_annotated(1)
    s = AnnotationSet(paths=["p"], task=SND, videos=[v], label_names={0: "dog"})
    assert s.tasks == (SND,) and s.task_label_names == {SND: {0: "dog"}}
