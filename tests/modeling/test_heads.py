"""Regression head output activation (``model.offset_activation``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from libs.common.errors import UserError
from libs.config import load_config
from libs.modeling import Detector
from libs.modeling.heads import RegHead


def _head(activation: str) -> RegHead:
    torch.manual_seed(0)
    head = RegHead(8, 8, 2, num_layers=2, kernel_size=3, with_ln=True, activation=activation)
    with torch.no_grad():                 # the left-distance channel negative everywhere: dead
        head.offset_head.conv.bias[0] = -50.0
    return head


def _run(head: RegHead):
    g = torch.Generator().manual_seed(1)                       # the same inputs for both heads
    feats = [torch.randn(2, 8, 16, generator=g), torch.randn(2, 8, 8, generator=g)]
    masks = [torch.ones(2, 1, 16, dtype=torch.bool), torch.ones(2, 1, 8, dtype=torch.bool)]
    out = head(feats, masks)
    sum(o.sum() for o in out).backward()
    return out


def test_relu_offsets_of_a_negative_channel_get_no_gradient_softplus_ones_do():
    relu, soft = _head("relu"), _head("softplus")
    soft.load_state_dict(relu.state_dict())
    out_relu, out_soft = _run(relu), _run(soft)
    assert all((o[:, 0] == 0).all() for o in out_relu)
    assert relu.offset_head.conv.bias.grad[0] == 0            # the dead channel never recovers
    assert soft.offset_head.conv.bias.grad[0] != 0
    assert all((o > 0).all() for o in out_soft)
    # same pre-activation: softplus of what relu clips (right channel: positive and negative)
    for r, s in zip(out_relu, out_soft):
        pre = torch.log(torch.expm1(s[:, 1].double()))          # softplus^-1
        assert torch.allclose(F.relu(pre).float(), r[:, 1], atol=1e-4)


def test_offset_activation_config():
    assert load_config("configs/demo_tal_train.yaml").model.offset_activation == "relu"
    cfg = load_config("configs/demo_unified_train.yaml", ["model.offset_activation=softplus"])
    model = Detector.from_config(cfg)
    assert all(h.activation is F.softplus for h in model.reg_heads.values())
    with pytest.raises(UserError, match="offset_activation"):
        load_config("configs/demo_tal_train.yaml", ["model.offset_activation=tanh"])
