"""Several tasks in one detector: head layout, per-task losses, modality dropout."""
from __future__ import annotations

import pytest
import torch

from libs.config.loader import resolve_config
from libs.config.tasks import TaskLayout
from libs.modeling import Detector
from libs.modeling.modality_dropout import ModalityDropout
from libs.modeling.multitask import TaskNormalizers, task_head_outputs, task_losses
from libs.training.loop import compute_losses, make_normalizer
from model_helpers import TWO, batch_of, config, two_task

@pytest.mark.parametrize("regression, reg_keys", [("shared", "reg_head."),
                                                  ("per_task", "reg_heads.sound_localisation.")])
def test_head_layout(regression, reg_keys):
    model = Detector.from_config(two_task(regression))
    keys = list(model.state_dict())
    assert any(k.startswith("cls_heads.action_localisation.cls_head.") for k in keys)
    assert any(k.startswith("cls_heads.sound_localisation.cls_head.") for k in keys)
    assert any(k.startswith(reg_keys) for k in keys)
    assert not any(k.startswith("cls_head.") for k in keys)
    one = Detector.from_config(config("sound_localisation", 2, regression))
    assert any(k.startswith("cls_head.") for k in one.state_dict())
    assert any(k.startswith("reg_head.") for k in one.state_dict())
    model.eval()
    batch = batch_of([[], []], [[], []])
    out = model(batch["feats"], batch["masks"])
    assert [x.shape[-1] for x in out["cls_logits"]] == [5] * 3
    assert [x.shape[-1] for x in out["offsets"]] == [2 if regression == "shared" else 4] * 3


def test_per_task_priors_and_empty_classes():
    cfg = config(TWO, {"action_localisation": 3, "sound_localisation": 2})
    cfg = resolve_config({**cfg.to_dict(), "train_cfg": {
        **cfg.to_dict()["train_cfg"], "cls_prior_prob": {"action_localisation": 0.01,
                                                         "sound_localisation": 0.1},
        "head_empty_cls": [4]}}, "test")
    model = Detector.from_config(cfg)
    b_act = model.cls_heads["action_localisation"].cls_head.conv.bias
    b_snd = model.cls_heads["sound_localisation"].cls_head.conv.bias
    assert torch.allclose(torch.sigmoid(b_act), torch.full((3,), 0.01))
    assert torch.allclose(torch.sigmoid(b_snd[0]), torch.tensor(0.1))
    assert torch.sigmoid(b_snd[1]) < 1e-5        # joint id 4 = sound class 1: empty


def _shared_weights(one: Detector, two: Detector, task: str) -> None:
    """Copy the two-task model's shared trunk and ``task``'s heads into the one-task model."""
    state = {}
    for k, v in two.state_dict().items():
        if k.startswith(f"cls_heads.{task}."):
            state["cls_head." + k[len(f"cls_heads.{task}."):]] = v
        elif not k.startswith("cls_heads."):
            state[k] = v
    one.load_state_dict(state, strict=True)


def test_task_loss_equals_the_single_task_loss_when_the_other_task_has_no_events():
    two_model = Detector.from_config(two_task()).train()
    one_model = Detector.from_config(config("sound_localisation", 2)).train()
    _shared_weights(one_model, two_model, "sound_localisation")
    # sound events only: joint labels 3, 4 = sound classes 0, 1
    segs = [[[5.0, 20.0], [30.0, 34.0]], [[2.0, 9.0]]]
    batch = batch_of(segs, [[3, 4], [3]])
    single = batch_of(segs, [[0, 1], [0]])
    out_two = two_model(batch["feats"], batch["masks"])
    out_one = one_model(single["feats"], single["masks"])
    cfg = two_task()
    got = compute_losses(out_two, batch, make_normalizer(cfg), cfg.train_cfg, two_model)
    ref = compute_losses(out_one, single, make_normalizer(config("sound_localisation", 2)),
                         cfg.train_cfg, one_model)
    for mine, theirs in (("cls_loss", "cls_loss"), ("reg_loss", "reg_loss"), ("loss", "final_loss")):
        assert torch.allclose(got[f"sound_localisation_{mine}"], ref[theirs], atol=1e-6), mine
    # the action task had no events: no positives, a classification loss only
    assert got["action_localisation_reg_loss"].item() == 0.0
    assert got["action_localisation_cls_loss"].item() > 0
    total = got["action_localisation_loss"] + got["sound_localisation_loss"]
    assert torch.allclose(got["final_loss"], total)
    assert got["num_pos"] == ref["num_pos"]


def test_task_loss_weights_scale_the_total():
    cfg = two_task()
    model = Detector.from_config(cfg).train()
    batch = batch_of([[[5.0, 20.0]], [[2.0, 9.0]]], [[0], [4]])
    out = model(batch["feats"], batch["masks"])
    layout = TaskLayout.from_config(cfg)
    a = task_losses(out, batch, TaskNormalizers(TWO, 250.0, 0.9), cfg.train_cfg, layout, False,
                    [1.0, 1.0])
    b = task_losses(out, batch, TaskNormalizers(TWO, 250.0, 0.9), cfg.train_cfg, layout, False,
                    [0.5, 3.0])
    assert torch.allclose(b["final_loss"], 0.5 * a["action_localisation_loss"]
                          + 3.0 * a["sound_localisation_loss"])


def test_a_video_without_a_tasks_annotation_gives_that_task_no_loss():
    cfg = two_task()
    model = Detector.from_config(cfg).train()
    layout = TaskLayout.from_config(cfg)
    segs, labels = [[[5.0, 20.0]], [[2.0, 9.0], [30.0, 40.0]]], [[0], [1, 4]]
    batch = batch_of(segs, labels, annotated=torch.tensor([[True, False], [True, True]]))
    out = model(batch["feats"], batch["masks"])
    got = task_losses(out, batch, TaskNormalizers(TWO, 250.0, 0.9), cfg.train_cfg, layout, False,
                      [1.0, 1.0])
    # the sound loss equals that of the batch holding only video 1 (same outputs, sliced)
    sub = {"cls_logits": [x[1:] for x in out["cls_logits"]], "offsets": [x[1:] for x in out["offsets"]],
           "fpn_masks": [x[1:] for x in out["fpn_masks"]], "points": out["points"]}
    only = {"segments": batch["segments"][1:], "labels": batch["labels"][1:], "annotated": None}
    ref = task_losses(sub, only, TaskNormalizers(TWO, 250.0, 0.9), cfg.train_cfg, layout, False,
                      [1.0, 1.0])
    assert torch.allclose(got["sound_localisation_loss"], ref["sound_localisation_loss"])
    # the action loss still sees both videos (both annotated for it)
    assert not torch.allclose(got["action_localisation_loss"], ref["action_localisation_loss"])


def test_per_task_regression_heads_are_sliced_per_task():
    cfg = two_task("per_task")
    model = Detector.from_config(cfg).eval()
    batch = batch_of([[], []], [[], []])
    out = model(batch["feats"], batch["masks"])
    views = task_head_outputs(out, TaskLayout.from_config(cfg), True)
    feats_out = model.neck(*model.backbone(batch["feats"], batch["masks"]))
    direct = model.reg_heads["sound_localisation"](*feats_out)
    assert torch.allclose(views[1][1][0], direct[0].permute(0, 2, 1))
    assert views[0][0][0].shape[-1] == 3 and views[1][0][0].shape[-1] == 2


def test_task_normalizers_state_round_trip():
    n = TaskNormalizers(TWO, 250.0, 0.9)
    n[1].update(10)
    m = TaskNormalizers(TWO, 1.0, 0.5)
    m.load_state_dict(n.state_dict())
    assert m.state_dict() == n.state_dict()
    assert m[0].value == 250.0 and m[1].value == pytest.approx(0.9 * 250 + 0.1 * 10)


def test_modality_dropout_zeroes_whole_modalities_and_never_all():
    drop = ModalityDropout([6, 4], 0.5)
    torch.manual_seed(0)
    x = torch.ones(400, 10, 7)
    y = drop(x)
    kept_a = y[:, :6].amax(dim=(1, 2)) > 0
    kept_v = y[:, 6:].amax(dim=(1, 2)) > 0
    assert torch.equal(y[:, :6].amin(dim=(1, 2)) > 0, kept_a)      # a block is all or nothing
    assert bool((kept_a | kept_v).all())                         # never both dropped
    assert 0.2 < (~kept_a).float().mean() < 0.45                # p(drop a) = 0.5 * 0.5 / 0.75 ... ~1/3
    state = torch.get_rng_state()
    assert ModalityDropout([6, 4], 0.0)(x) is x
    assert torch.equal(torch.get_rng_state(), state)             # p = 0 draws nothing


def test_modality_dropout_only_in_training():
    model = Detector.from_config(two_task(modality_dropout=0.5))
    batch = batch_of([[]] * 8, [[]] * 8)      # P(no video drops a modality) = 0.5 ** 8
    model.eval()
    a = model(batch["feats"], batch["masks"])["cls_logits"][0]
    b = model(batch["feats"], batch["masks"])["cls_logits"][0]
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    c = model(batch["feats"], batch["masks"])["cls_logits"][0]
    assert not torch.allclose(a, c)
