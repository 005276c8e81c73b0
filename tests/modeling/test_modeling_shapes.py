"""Shapes, config mapping, registries, init and parameter counts of libs/modeling/detector.py."""
from __future__ import annotations

import math

import pytest
import torch

from libs.config.loader import resolve_config
from libs.common.errors import UserError
from libs.modeling import Detector, build_backbone, build_neck

LEVEL_LENGTHS = [192, 96, 48, 24, 12, 6]


def _small(head_empty_cls=(), cls_prior_prob=0.01, **model) -> Detector:
    """A small detector on 6 + 2 input channels, 3 classes, 192 cells (model keys as kwargs)."""
    raw = _raw([(6, 1), (2, 1)], **{"embd_dim": 16, "n_head": 2, **model})
    raw["dataset"]["num_classes"] = 3
    raw["train_cfg"] = {"head_empty_cls": list(head_empty_cls), "cls_prior_prob": cls_prior_prob}
    return Detector.from_config(resolve_config(raw, "t"))


def _raw(modalities, **model) -> dict:
    mods = [{"name": f"m{i}", "path": f"p{i}", "dim": d, "rows_per_step": r, "primary": i == 0}
            for i, (d, r) in enumerate(modalities)]
    return {"dataset": {"annotation_file": "a.json", "num_classes": 63, "modalities": mods},
            "model": model}


def _count(model: torch.nn.Module) -> tuple:
    return sum(p.numel() for p in model.parameters()), len(model.state_dict())


def test_six_levels_and_output_shapes() -> None:
    torch.manual_seed(0)
    model = _small().eval()
    feats = torch.randn(2, 8, 192)
    masks = (torch.arange(192) < torch.tensor([[192], [100]]))[:, None, :]
    with torch.no_grad():
        out = model(feats * masks, masks)
    assert [f.shape[-1] for f in out["backbone_feats"]] == LEVEL_LENGTHS
    assert model.strides == [1, 2, 4, 8, 16, 32] and model.max_div_factor == 96
    assert model.num_classes == 3 and model.max_seq_len == 192
    for lvl, t in enumerate(LEVEL_LENGTHS):
        assert out["fpn_feats"][lvl].shape == (2, 16, t)
        assert out["fpn_masks"][lvl].shape == (2, t) and out["fpn_masks"][lvl].dtype == torch.bool
        assert out["points"][lvl].shape == (t, 4)
        assert out["cls_logits"][lvl].shape == (2, t, 3)
        assert out["offsets"][lvl].shape == (2, t, 2)
        assert torch.all(out["offsets"][lvl] >= 0)
    assert out["fpn_masks"][1][1].sum() == 50


def test_long_inference_input() -> None:
    """288 > max_seq_len, a multiple of max_div_factor 96: eval works with buffer factor 1.5."""
    model = _small(max_buffer_len_factor=1.5).eval()
    feats = torch.randn(1, 8, 288)
    masks = (torch.arange(288) < 250)[None, None, :]
    with torch.no_grad():
        out = model(feats, masks)
    assert [p.shape[0] for p in out["points"]] == [288, 144, 72, 36, 18, 9]
    assert out["cls_logits"][5].shape == (1, 9, 3)
    short = _small(max_buffer_len_factor=1.0).eval()
    with pytest.raises(ValueError, match="buffer"), torch.no_grad():
        short(feats, masks)
    model.train()
    with pytest.raises(AssertionError):
        model(feats, masks)


def test_fpn_neck_and_start_level() -> None:
    model = _small(neck="fpn", fpn_dim=8, head_dim=12, fpn_start_level=1,
                   regression_range=[[0, 8], [8, 16], [16, 32], [32, 64], [64, 10000]]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 8, 192), torch.ones(1, 1, 192, dtype=torch.bool))
    assert model.strides == [2, 4, 8, 16, 32]
    assert [f.shape for f in out["fpn_feats"]] == [(1, 8, t) for t in LEVEL_LENGTHS[1:]]
    assert model.cls_head.head[1].conv.weight.shape == (12, 12, 3)
    assert [p[0, 3].item() for p in out["points"]] == [2, 4, 8, 16, 32]


def test_init_and_key_names() -> None:
    model = _small(head_empty_cls=[1], cls_prior_prob=0.01)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv1d) and m.bias is not None]
    assert len(convs) == 7 * 6 and all(torch.all(m.bias == 0) for m in convs)   # q/k/v/proj/mlp x2
    bias = model.cls_head.cls_head.conv.bias
    assert bias[0].item() == pytest.approx(-math.log(99), abs=1e-6)
    assert bias[1].item() == pytest.approx(-math.log((1 - 1e-6) / 1e-6), abs=1e-5)
    keys = set(model.state_dict())
    for k in ("backbone.embd.0.conv.weight", "backbone.embd_norm.0.weight",
              "backbone.stem.0.attn.query_conv.conv.weight", "backbone.branch.4.mlp.3.bias",
              "neck.fpn_norms.0.weight", "cls_head.head.0.conv.weight", "cls_head.norm.0.weight",
              "cls_head.cls_head.conv.bias", "reg_head.scale.0.scale", "reg_head.offset_head.conv.weight"):
        assert k in keys, k
    assert model.reg_head.scale[0].scale.shape == ()


def test_registry_errors() -> None:
    with pytest.raises(UserError, match="fusion, single_stream"):
        build_backbone("nope", input_groups=[4], embd_dim=8, n_head=2, max_seq_len=192)
    with pytest.raises(UserError, match="fpn, identity"):
        build_neck("bifpn", in_channels=[8], out_channels=8, scale_factor=2, start_level=0,
                   with_ln=True)


def test_fusion_groups_rule() -> None:
    mods = [(1024, 1), (1024, 1), (768, 2)]

    def groups(**model):
        d = resolve_config(_raw(mods, backbone="fusion", **model), "t").derived
        return list(d.input_groups), d.group_proj_dims and list(d.group_proj_dims)

    assert resolve_config(_raw(mods, backbone="fusion"), "t").derived.input_dims == (1024, 1024, 1536)
    assert groups() == ([1024, 1024, 768, 768], [1024, 1024, 768, 768])
    assert groups(proj_dims=[64, 64, 32]) == ([1024, 1024, 1536], [64, 64, 32])      # per modality
    assert groups(proj_dims=[64, 64, 32, 32]) == ([1024, 1024, 768, 768], [64, 64, 32, 32])  # per row
    single = resolve_config(_raw(mods), "t").derived
    assert single.input_groups == (1024, 1024, 1536) and single.group_proj_dims is None
    with pytest.raises(UserError, match="proj_dims"):
        groups(proj_dims=[64, 64])


def test_fusion_forward_per_modality_projection() -> None:
    cfg = resolve_config(_raw([(6, 1), (4, 2)], backbone="fusion", embd_dim=16, n_head=2,
                              proj_dims=[4, 4]), "t")
    model = Detector.from_config(cfg).eval()
    assert model.backbone.proj[1].conv.weight.shape == (4, 8, 1)
    with torch.no_grad():
        out = model(torch.randn(1, 14, 192), torch.ones(1, 1, 192, dtype=torch.bool))
    assert out["cls_logits"][0].shape == (1, 192, 63)


# (modalities (dim, rows_per_step), backbone, width, heads, classes, #params, #keys)
ORIGINAL = [
    ([(768, 1), (1024, 1)], "single_stream", 512, 8, 12, 28_846_100, 229),
    ([(1024, 1), (1024, 1), (768, 2)], "fusion", 1024, 16, 63, 118_538_823, 237),
    ([(1024, 1), (768, 2)], "fusion", 1024, 16, 63, 114_343_495, 235),
]


@pytest.mark.parametrize("mods,backbone,width,heads,classes,n_params,n_keys", ORIGINAL)
def test_original_parameter_counts(mods, backbone, width, heads, classes, n_params, n_keys) -> None:
    raw = _raw(mods, backbone=backbone, embd_dim=width, n_head=heads)
    raw["dataset"]["num_classes"] = classes
    cfg = resolve_config(raw, "t")
    with torch.device("meta"):                                # counts only: no memory, no init cost
        model = Detector.from_config(cfg)
    assert _count(model) == (n_params, n_keys)


def test_training_backward_is_finite() -> None:
    torch.manual_seed(1)
    model = _small(droppath=0.1).train()
    masks = (torch.arange(192) < torch.tensor([[192], [70]]))[:, None, :]
    out = model(torch.randn(2, 8, 192) * masks, masks)
    loss = sum(x.sum() for x in out["cls_logits"]) + sum(x.sum() for x in out["offsets"])
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
