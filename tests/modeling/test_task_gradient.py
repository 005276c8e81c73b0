"""train_cfg.task_gradient: the tasks' gradients meeting in the shared features (PCGrad)."""
from __future__ import annotations

import pytest
import torch

from libs.common.errors import UserError
from libs.modeling import Detector
from libs.modeling.task_gradient import branch_features, project_conflicts
from libs.training.loop import compute_losses, make_normalizer

from model_helpers import batch_of, two_task


def _pcgrad_reference(grads, priority=False):
    """Textbook PCGrad, one row at a time, in Python."""
    n, rows, _ = grads.shape
    out = []
    for b in range(rows):
        total = torch.zeros_like(grads[0, b])
        for t in range(n):
            g = grads[t, b].clone()
            for s in (range(t) if priority else range(n)):
                if s != t and float(g @ grads[s, b]) < 0:
                    g = g - (g @ grads[s, b]) / (grads[s, b] @ grads[s, b]) * grads[s, b]
            total += g
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("priority", [False, True])
@pytest.mark.parametrize("num_tasks", [2, 3])
def test_projection_equals_textbook_pcgrad(num_tasks, priority):
    torch.manual_seed(1)
    grads = torch.randn(num_tasks, 16, 7, dtype=torch.float64)
    got = project_conflicts(grads, priority)
    assert got.dtype == torch.float64
    assert torch.allclose(got, _pcgrad_reference(grads, priority), atol=1e-6)
    if priority and num_tasks == 2:    # the first task's gradient is kept; the second's added
        second = got - grads[0]        # part never points against it
        assert bool(((second * grads[0]).sum(-1) >= -1e-5).all())


def test_projection_removes_only_conflicts():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 2.0]])
    b = torch.tensor([[-1.0, 1.0], [0.5, 1.0], [0.0, 0.0]])      # conflict, agree, zero gradient
    got = project_conflicts(torch.stack([a, b]))
    # row 0: a -> a - (-1/2) b = (0.5, 0.5); b -> b - (-1/1) a = (0, 1); row 1, 2: plain sums
    assert torch.allclose(got, torch.tensor([[0.5, 1.5], [1.5, 1.0], [1.0, 2.0]]))
    for t in (a, b):                     # two tasks: the result never points against either task
        assert bool(((got * t).sum(-1) >= -1e-6).all())
    first = project_conflicts(torch.stack([a, b]), priority=True)
    # priority: a unchanged; b projected against a only (row 0: b -> (0, 1))
    assert torch.allclose(first, torch.tensor([[1.0, 1.0], [1.5, 1.0], [1.0, 2.0]]))


def _grads(model, batch, cfg):
    model.zero_grad()
    out = model(batch["feats"], batch["masks"])
    loss = compute_losses(out, batch, make_normalizer(cfg), cfg.train_cfg, model)["final_loss"]
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["project", "priority"])
@pytest.mark.parametrize("regression", ["shared", "per_task"])
def test_project_changes_only_the_trunk_gradient(regression, mode):
    cfg_sum = two_task(regression)
    cfg_proj = two_task(regression, {"task_gradient": mode})
    torch.manual_seed(0)
    plain = Detector.from_config(cfg_sum).train()
    proj = Detector.from_config(cfg_proj).train()
    proj.load_state_dict(plain.state_dict())
    assert proj.task_gradient == mode
    batch = batch_of([[[5.0, 20.0], [30.0, 34.0]], [[2.0, 9.0]]], [[0, 4], [3]])
    torch.manual_seed(5)
    out_a, g_sum = _grads(plain, batch, cfg_sum)
    torch.manual_seed(5)
    out_b, g_proj = _grads(proj, batch, cfg_proj)
    for key in ("cls_logits", "offsets"):            # the forward pass is the same function
        for x, y in zip(out_a[key], out_b[key]):
            assert torch.equal(x, y)
    heads = [n for n in g_sum if n.startswith(("cls_heads.", "reg_head", "reg_heads."))]
    trunk = [n for n in g_sum if n.startswith(("backbone.", "neck."))]
    assert heads and trunk
    for n in heads:                                   # each head only sees its own task
        assert torch.allclose(g_sum[n], g_proj[n], atol=1e-7), n
    changed = [n for n in trunk if not torch.allclose(g_sum[n], g_proj[n], atol=1e-7)]
    assert changed, "the tasks conflicted nowhere: the test batch does not exercise the projection"


def test_branch_features_passes_through_outside_training_or_with_sum():
    x = torch.randn(2, 3, 4, requires_grad=True)
    assert all(f[0] is x for f in branch_features([x], 2, "sum"))
    with torch.no_grad():
        assert all(f[0] is x for f in branch_features([x], 2, "project"))
    assert branch_features([x], 1, "project")[0][0] is x
    copies = branch_features([x], 2, "project")
    assert all(torch.equal(f[0], x) and f[0] is not x for f in copies)


def test_task_gradient_choices_are_checked():
    with pytest.raises(UserError, match="train_cfg.task_gradient"):
        two_task(train_cfg={"task_gradient": "pcgrad"})
