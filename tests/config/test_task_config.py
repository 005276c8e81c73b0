"""Several-task configs (README: unified model): parsing, derived values, strict errors."""
from __future__ import annotations

import pytest

from libs.common.errors import UserError
from libs.config.loader import config_to_yaml, read_yaml, resolve_config
from libs.config.tasks import TaskLayout, task_test_cfg, task_values

BASE = {"dataset": {"annotation_file": "a.json",
                    "modalities": [{"name": "a", "path": "a", "dim": 8, "primary": True},
                                   {"name": "v", "path": "v", "dim": 4}]}}
TWO = ["action_localisation", "sound_localisation"]


def cfg_of(**changes):
    raw = {"dataset": dict(BASE["dataset"])}
    for dotted, value in changes.items():
        *head, last = dotted.split("__")
        d = raw
        for part in head:
            d = d.setdefault(part, {})
        d[last] = value
    return resolve_config(raw, "t.yaml")


def two(**changes):
    return cfg_of(task=TWO, dataset__num_classes={"action_localisation": 5,
                                                  "sound_localisation": 3}, **changes)


def test_single_task_string_and_list_of_one_are_the_same_model():
    a, b = cfg_of(), cfg_of(task=["sound_localisation"])
    assert a.derived.tasks == b.derived.tasks == ("sound_localisation",)
    assert a.derived.task_num_classes == (12,) and a.derived.class_offsets == (0,)
    assert a.derived.num_classes == 12 and a.dataset.num_classes == 12
    assert TaskLayout.from_config(a) == TaskLayout.single("sound_localisation", 12)


def test_two_tasks_derive_the_joint_label_space():
    cfg = two()
    assert cfg.task == tuple(TWO)
    assert cfg.derived.tasks == tuple(TWO)
    assert cfg.derived.task_num_classes == (5, 3) and cfg.derived.class_offsets == (0, 5)
    assert cfg.derived.num_classes == 8
    layout = TaskLayout.from_config(cfg)
    assert layout.class_range("sound_localisation") == (5, 8)
    assert list(layout.task_of([0, 4, 5, 7])) == [0, 0, 1, 1]
    assert layout.joint_label_names({"action_localisation": {0: "run"},
                                     "sound_localisation": {2: "dog"}}) == {0: "run", 7: "dog"}


def test_two_task_config_round_trips_through_yaml():
    cfg = two(train_cfg__task_loss_weight={"action_localisation": 1.0, "sound_localisation": 2.0},
              test_cfg__per_task={"sound_localisation": {"nms": {"sigma": 0.5}}})
    again = resolve_config(read_yaml(config_to_yaml(cfg), "dump"), "dump")
    assert again == cfg


def test_per_task_values():
    cfg = two(train_cfg__task_loss_weight={"action_localisation": 0.5, "sound_localisation": 2.0},
              train_cfg__cls_prior_prob=0.02)
    assert task_values(cfg.train_cfg.task_loss_weight, cfg.derived.tasks) == [0.5, 2.0]
    assert task_values(cfg.train_cfg.cls_prior_prob, cfg.derived.tasks) == [0.02, 0.02]


def test_per_task_test_cfg_overlays_the_shared_one():
    cfg = two(test_cfg__pre_nms_topk=100,
              test_cfg__per_task={"sound_localisation": {"nms": {"sigma": 0.9},
                                                         "pre_nms_thresh": 0.05}})
    snd, act = task_test_cfg(cfg, "sound_localisation"), task_test_cfg(cfg, "action_localisation")
    assert snd.nms.sigma == 0.9 and snd.pre_nms_thresh == 0.05 and snd.pre_nms_topk == 100
    assert snd.nms.method == cfg.test_cfg.nms.method
    assert act == cfg.test_cfg


@pytest.mark.parametrize("changes, message", [
    ({"task": TWO}, "'dataset.num_classes' (t.yaml): expected a mapping {task: count} for the tasks"),
    ({"task": TWO, "dataset__num_classes": {"action_localisation": 5}},
     "'dataset.num_classes' (t.yaml): no value for task(s) ['sound_localisation']"),
    ({"task": TWO, "dataset__num_classes": {"action_localisation": 5, "sound_localisation": 3,
                                            "speech": 2}},
     "'dataset.num_classes' (t.yaml): ['speech'] not listed in 'task'"),
    ({"dataset__num_classes": {"sound_localisation": 3}},
     "'dataset.num_classes' (t.yaml): expected an int with one task"),
    ({"task": ["sound_localisation", "sound_localisation"]}, "'task' (t.yaml): expected each task once"),
    ({"task": ["action_localisation", "speech"]},
     "invalid value for config key 'task[1]' (t.yaml): expected one of"),
    ({"task": TWO, "dataset__num_classes": {"action_localisation": 5, "sound_localisation": 0}},
     "'dataset.num_classes.sound_localisation' out of range"),
    ({"train_cfg__task_loss_weight": {"action_localisation": 1.0}},
     "'train_cfg.task_loss_weight' (t.yaml): ['action_localisation'] not listed in 'task'"),
    ({"test_cfg__per_task": {"action_localisation": {}}},
     "'test_cfg.per_task' (t.yaml): ['action_localisation'] not listed in 'task'"),
    ({"model__modality_dropout": 0.2, "dataset__modalities": [
        {"name": "a", "path": "a", "dim": 8, "primary": True}]},
     "'model.modality_dropout' (t.yaml): needs 2 or more modalities"),
])
def test_task_key_errors(changes, message):
    with pytest.raises(UserError) as err:
        cfg_of(**changes)
    assert message in str(err.value)


@pytest.mark.parametrize("changes, message", [
    ({"test_cfg__per_task": {"sound_localisation": {"nms": {"sgima": 0.5}}}},
     "unknown config key 'test_cfg.per_task.sound_localisation.nms.sgima' (t.yaml): did you mean "
     "'test_cfg.per_task.sound_localisation.nms.sigma'?"),
    ({"test_cfg__per_task": {"sound_localisation": {"ext_score_topk": 3}}},
     "'test_cfg.per_task.sound_localisation.ext_score_topk' (t.yaml): holds for every task"),
    ({"test_cfg__per_task": {"sound_localisation": {"nms": {"sigma": -1}}}},
     "'test_cfg.per_task.sound_localisation.nms.sigma' out of range"),
    ({"test_cfg__per_task": {"sound_localisation": 3}},
     "wrong type for config key 'test_cfg.per_task.sound_localisation' (t.yaml): expected a mapping"),
    ({"test_cfg__ext_score_file": "x.json"},
     "'test_cfg.ext_score_file' (t.yaml): external class scores work with one task"),
    ({"train__accum_steps": 2}, "'train.accum_steps' (t.yaml): expected 1 with several tasks"),
    ({"train_cfg__head_empty_cls": [8]}, "expected class ids below dataset.num_classes (8 in all)"),
])
def test_two_task_errors(changes, message):
    with pytest.raises(UserError) as err:
        two(**changes)
    assert message in str(err.value)
