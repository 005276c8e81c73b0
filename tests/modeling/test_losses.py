"""Tests of libs/modeling/losses.py: hand-computed values and golden parity."""
from __future__ import annotations

import math

import pytest
import torch

from libs.modeling.assign import assign_targets
from libs.modeling.losses import (LossNormalizer, ctr_diou_loss_1d, detection_losses,
                                  per_video_nonfinite, sigmoid_focal_loss)

from golden import GOLDEN_FILES, load_golden as _golden





def _focal_by_hand(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss *= alpha * t + (1 - alpha) * (1 - t)
    return loss


def test_focal_loss_hand_values():
    xs, ts = [0.0, 2.0, -1.0, -4.59512, 3.0], [1.0, 0.0, 1.0, 0.0, 0.3]
    # x=0, t=1: p=0.5, ce=ln2, (1-p_t)^2=0.25, alpha_t=0.25 -> ln2/16
    assert _focal_by_hand(0.0, 1.0) == pytest.approx(math.log(2) / 16)
    expected = [_focal_by_hand(x, t) for x, t in zip(xs, ts)]
    got = sigmoid_focal_loss(torch.tensor(xs), torch.tensor(ts), reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-8)
    assert sigmoid_focal_loss(torch.tensor(xs), torch.tensor(ts)).item() == \
        pytest.approx(sum(expected), rel=1e-6)
    assert sigmoid_focal_loss(torch.tensor(xs), torch.tensor(ts), reduction="mean").item() == \
        pytest.approx(sum(expected) / 5, rel=1e-6)
    no_alpha = sigmoid_focal_loss(torch.tensor(xs), torch.tensor(ts), alpha=-1, reduction="none")
    torch.testing.assert_close(no_alpha, torch.tensor([_focal_by_hand(x, t, alpha=-1)
                                                       for x, t in zip(xs, ts)]),
                               rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError):
        sigmoid_focal_loss(torch.tensor(xs), torch.tensor(ts), reduction="max")


def test_diou_hand_values():
    pred = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.5, 0.5], [0.0, 0.0]])
    target = torch.tensor([[2.0, 1.0], [3.0, 0.0], [1.5, 0.5], [0.0, 0.0]])
    # row 0: I=1+1=2, U=3+3-2=4, IoU=.5, C=2+2=4, rho=.5*(2-1-1+2)=1 -> 1-.5+(1/4)^2 = .5625
    # row 1: I=0+0=0, U=1+3=4, IoU=0, C=3+1=4, rho=.5*(1-0-0+3)=2 -> 1+(2/4)^2 = 1.25
    # row 2: identical -> 0
    # row 3: zero length: U=0 -> IoU=0/eps=0, C=0 -> rho/eps=0 -> 1
    expected = torch.tensor([0.5625, 1.25, 0.0, 1.0])
    torch.testing.assert_close(ctr_diou_loss_1d(pred, target, reduction="none"), expected)
    assert ctr_diou_loss_1d(pred, target).item() == pytest.approx(expected.sum().item())


def test_loss_normalizer_ema_and_state():
    norm = LossNormalizer(250.0, 0.9)
    assert norm.update(32) == 0.9 * 250.0 + (1 - 0.9) * 32
    v = norm.value
    assert norm.update(0) == 0.9 * v + (1 - 0.9) * 1                  # max(num_pos, 1)
    v = norm.value
    assert norm.update(torch.tensor(7)) == 0.9 * v + (1 - 0.9) * 7    # tensor counts accepted
    state = norm.state_dict()
    other = LossNormalizer(1.0, 0.9)
    other.load_state_dict(state)
    assert other.value == norm.value and other.momentum == norm.momentum
    assert float(other) == norm.value


def test_loss_normalizer_reduce_fn():
    seen = []

    def fake_all_reduce(n):
        seen.append(int(n))
        return int(n) * 4                                              # 4 ranks, same count

    norm = LossNormalizer(100.0, 0.5, reduce_fn=fake_all_reduce)
    assert norm.update(torch.tensor(10)) == 0.5 * 100.0 + 0.5 * 40
    assert seen == [10]


def test_loss_normalizer_distributed_single_rank(tmp_path):
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        norm = LossNormalizer(10.0, 0.9)
        assert norm.update(torch.tensor(5)) == pytest.approx(0.9 * 10.0 + (1 - 0.9) * 5)
        assert norm.update(3) == pytest.approx(0.9 * (0.9 * 10.0 + 0.1 * 5) + 0.1 * 3)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_golden_losses(name):
    g = _golden(name)
    tr, items = g["train"], g["train_items"]
    points = torch.cat(tr["points"])
    cls_t, reg_t = assign_targets(points, [it["segments"] for it in items],
                                  [it["labels"] for it in items], 5, "radius", 1.5)
    norm = LossNormalizer(float(tr["loss_normalizer_before"]), 0.9)
    out = detection_losses(tr["cls_logits"], tr["offsets"], tr["fpn_masks"], cls_t, reg_t, norm,
                           loss_weight=1.0, label_smoothing=0.0)
    for key in ("cls_loss", "reg_loss", "final_loss"):
        ref = float(tr["losses"][key])
        assert abs(out[key].item() - ref) <= 1e-5 * abs(ref), key
    assert norm.value == pytest.approx(float(tr["loss_normalizer_after"]), rel=1e-12)
    assert out["num_pos"] > 0


def _toy_batch(num_pos_points: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lens, num_classes = [8, 4], 3
    cls_logits = [torch.randn(2, t, num_classes, generator=gen, requires_grad=True) for t in lens]
    offsets = [torch.rand(2, t, 2, generator=gen).requires_grad_() for t in lens]
    masks = [torch.ones(2, t, dtype=torch.bool) for t in lens]
    masks[0][1, 6:] = False
    cls_t = torch.zeros(2, sum(lens), num_classes)
    reg_t = torch.rand(2, sum(lens), 2, generator=gen) + 0.1
    for i in range(num_pos_points):
        cls_t[i % 2, 2 * i, i % num_classes] = 1.0
    return cls_logits, offsets, masks, cls_t, reg_t


def test_no_positives_reg_zero_with_grad():
    cls_logits, offsets, masks, cls_t, reg_t = _toy_batch(num_pos_points=0)
    norm = LossNormalizer(250.0, 0.9)
    out = detection_losses(cls_logits, offsets, masks, cls_t, reg_t, norm)
    assert out["num_pos"] == 0 and out["reg_loss"].item() == 0.0
    assert norm.value == 0.9 * 250.0 + (1 - 0.9) * 1
    out["final_loss"].backward()
    assert offsets[0].grad is not None and offsets[0].grad.abs().sum() == 0


def test_masked_points_ignored_and_manual_sum():
    cls_logits, offsets, masks, cls_t, reg_t = _toy_batch()
    cls_t[1, 7, 0] = 1.0                                               # positive but masked out
    norm = LossNormalizer(250.0, 0.9)
    out = detection_losses(cls_logits, offsets, masks, cls_t, reg_t, norm)
    assert out["num_pos"] == 3
    valid = torch.cat(masks, 1)
    pos = (cls_t.sum(-1) > 0) & valid
    n = 0.9 * 250.0 + (1 - 0.9) * 3
    cls_ref = sigmoid_focal_loss(torch.cat(cls_logits, 1)[valid], cls_t[valid]) / n
    reg_ref = ctr_diou_loss_1d(torch.cat(offsets, 1)[pos], reg_t[pos]) / n
    torch.testing.assert_close(out["cls_loss"], cls_ref)
    torch.testing.assert_close(out["reg_loss"], reg_ref)
    torch.testing.assert_close(out["final_loss"], cls_ref + reg_ref)


def test_label_smoothing_uses_k_plus_one():
    cls_logits, offsets, masks, cls_t, reg_t = _toy_batch()
    ls, num_classes = 0.2, cls_t.shape[-1]
    out = detection_losses(cls_logits, offsets, masks, cls_t, reg_t, LossNormalizer(10.0, 0.9),
                           label_smoothing=ls)
    valid = torch.cat(masks, 1)
    target = cls_t[valid] * (1 - ls) + ls / (num_classes + 1)
    n = 0.9 * 10.0 + (1 - 0.9) * 3
    ref = sigmoid_focal_loss(torch.cat(cls_logits, 1)[valid], target) / n
    torch.testing.assert_close(out["cls_loss"], ref)


def test_loss_weight_balancing():
    cls_logits, offsets, masks, cls_t, reg_t = _toy_batch()
    out = detection_losses(cls_logits, offsets, masks, cls_t, reg_t, LossNormalizer(1.0, 0.9),
                           loss_weight=0.0)
    cls_v, reg_v = out["cls_loss"].item(), out["reg_loss"].item()
    assert out["final_loss"].item() == pytest.approx(cls_v + reg_v * cls_v / max(reg_v, 0.01),
                                                     rel=1e-6)
    out2 = detection_losses(cls_logits, offsets, masks, cls_t, reg_t, LossNormalizer(1.0, 0.9),
                            loss_weight=2.0)
    assert out2["final_loss"].item() == pytest.approx(out2["cls_loss"].item()
                                                      + 2.0 * out2["reg_loss"].item(), rel=1e-6)


def test_per_video_nonfinite():
    cls_logits, offsets, _, _, _ = _toy_batch()
    cls_logits = [c.detach().clone() for c in cls_logits]
    offsets = [o.detach().clone() for o in offsets]
    assert per_video_nonfinite(cls_logits, offsets) == []
    cls_logits[1][1, 2, 0] = float("nan")
    assert per_video_nonfinite(cls_logits, offsets) == [1]
    offsets[0][0, 0, 1] = float("inf")
    assert per_video_nonfinite(cls_logits, offsets) == [0, 1]
