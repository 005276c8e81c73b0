"""The fast formulations of libs/modeling/{layers,attention,heads}.py against direct formulas:
1x1 convs as matmuls, depthwise convs as shifted products, the blocked band attention, the
heads' one call for all levels, and the fused LayerNorm path (docs/numerics.md s.4.2, 4.5, 4.7)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from libs.modeling.attention import band_attention, band_bias, band_block
from libs.modeling.heads import ClsHead, LevelPack, RegHead
from libs.modeling.layers import (ChannelLayerNorm, PointwiseConv1d, channels_last, conv1d_btc,
                                  depthwise_conv_btc)


from model_helpers import padding_mask as _mask  # noqa: E402
from model_helpers import randomise as _randomise  # noqa: E402


def test_pointwise_conv_is_the_1x1_conv() -> None:
    torch.manual_seed(0)
    pw = PointwiseConv1d(6, 5)
    ref = torch.nn.Conv1d(6, 5, 1)
    ref.load_state_dict(pw.state_dict())                      # same keys and shapes
    assert pw.weight.shape == (5, 6, 1) and isinstance(pw, torch.nn.Conv1d)
    x = torch.randn(3, 6, 11)
    for inp in (x, channels_last(x)):                         # either memory layout
        out = pw(inp)
        assert out.shape == (3, 5, 11) and out.transpose(1, 2).is_contiguous()
        assert torch.allclose(out, ref(x), atol=1e-6)


@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 3), (4, 5)])
def test_depthwise_conv_btc_is_the_grouped_conv(stride: int, kernel: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 4, 16)
    w = torch.randn(4, 1, kernel)
    ref = F.conv1d(x, w, stride=stride, padding=kernel // 2, groups=4)           # (B, C, T / s)
    out = depthwise_conv_btc(x.transpose(1, 2), w, stride)                       # (B, T / s, C)
    assert torch.allclose(out.transpose(1, 2), ref, atol=1e-6)


def _dense_band(q, k, v, kv_mask, w, rel):
    """The band softmax of docs/numerics.md s.4.5 written densely: (B, h, T, d)."""
    t = q.shape[2]
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    s = q @ k.transpose(-1, -2)
    if rel is not None:
        s = s + rel[:, (j - i).clamp(-w, w) + w][None]
    s = s.masked_fill((j - i).abs() > w, float("-inf"))
    s = s + (~kv_mask[:, :, None, :]).float() * -1e4
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("t,block", [(24, 24), (20, 8), (13, 5)])       # one block, tails
@pytest.mark.parametrize("with_rel", [False, True])
def test_band_attention_blocks_equal_dense_band_and_gradients_are_finite(t, block, with_rel) -> None:
    torch.manual_seed(2)
    b, h, d, w = 2, 3, 4, 3
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    kv_mask = _mask([t, t - 4], t)
    rel = torch.randn(h, 2 * w + 1) if with_rel else None
    out = band_attention(q, k, v, band_bias(kv_mask, w, block, rel), w, block)
    ref = _dense_band(q, k, v, kv_mask, w, rel)
    valid = kv_mask[:, 0, :]                                  # padded query rows are masked later
    assert torch.allclose(out.transpose(1, 2)[valid], ref.transpose(1, 2)[valid], atol=1e-5)
    (out * valid[:, None, :, None]).sum().backward()          # a tail block must not give NaN
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_band_block_divides_when_it_can() -> None:
    assert band_block(24) == 24 and band_block(192) == 64 and band_block(96) == 48
    assert band_block(2304) == 64 and 192 % band_block(192) == 0


def _per_level_trunk(head, x, m):
    for conv, norm in zip(head.head, head.norm):
        x = F.relu(norm(conv(x, m)[0]))
    return x


@pytest.mark.parametrize("training", [True, False])
def test_heads_one_call_equal_one_call_per_level(training: bool) -> None:
    torch.manual_seed(3)
    cls = ClsHead(8, 8, 5, prior_prob=0.01, num_layers=3, kernel_size=3, with_ln=True, empty_cls=[])
    reg = RegHead(8, 8, 3, num_layers=3, kernel_size=3, with_ln=True)
    _randomise(cls, 4)
    _randomise(reg, 5)
    cls.train(training)
    reg.train(training)
    lengths = [16, 8, 4]
    feats = [torch.randn(2, 8, n) for n in lengths]
    masks = [_mask([n, n // 2], n) for n in lengths]       # padded positions leak (s.4.9)
    out_c, out_r = cls(feats, masks), reg(feats, masks)
    for lv, (x, m) in enumerate(zip(feats, masks)):
        ref_c = cls.cls_head(_per_level_trunk(cls, x, m), m)[0]
        ref_r = F.relu(reg.scale[lv](reg.offset_head(_per_level_trunk(reg, x, m), m)[0]))
        assert out_c[lv].shape == ref_c.shape and torch.allclose(out_c[lv], ref_c, atol=1e-5)
        assert torch.allclose(out_r[lv], ref_r, atol=1e-5)
    loss = sum(o.sum() for o in out_c + out_r)
    loss.backward()
    assert all(s.scale.grad is not None for s in reg.scale)   # every level's Scale is trained


def test_level_pack_gaps_and_alignment() -> None:
    feats = [torch.ones(1, 2, n) for n in (6, 3)]
    masks = [torch.ones(1, 1, n, dtype=torch.bool) for n in (6, 3)]
    pack = LevelPack.build(feats, masks, gap=1)
    assert pack.x.shape == (1, 16, 2) and pack.x.is_contiguous()       # (B, P, C) memory
    assert pack.starts == [0, 7] and pack.lengths == [6, 3]
    assert pack.keep[0, :, 0].tolist() == [1] * 6 + [0] + [1] * 3 + [0] * 6
    assert torch.equal(pack.mask[0, :, 0].float(), pack.keep[0, :, 0])
    assert torch.equal(pack.x[0, :, 0], pack.keep[0, :, 0])


def test_heads_under_bf16_autocast_give_float32_and_a_float32_cls_head_in_eval() -> None:
    torch.manual_seed(6)
    cls = ClsHead(8, 8, 5, prior_prob=0.01, num_layers=3, kernel_size=3, with_ln=True, empty_cls=[])
    _randomise(cls, 7)
    cls.eval()
    feats = [torch.randn(2, 8, n) for n in (16, 8)]
    masks = [torch.ones(2, 1, n, dtype=torch.bool) for n in (16, 8)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cls(feats, masks)
    ref = cls(feats, masks)
    assert all(o.dtype == torch.float32 for o in out)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))  # eval: the same float32 arithmetic


def test_layer_norm_paths_agree() -> None:
    torch.manual_seed(8)
    ln = ChannelLayerNorm(6)
    _randomise(ln, 9)
    x = torch.randn(2, 6, 9)
    manual = ln(x)                                            # (B, C, T) memory: explicit ops
    fused = ln(channels_last(x))                              # (B, T, C) memory: F.layer_norm
    assert fused.transpose(1, 2).is_contiguous() and x.is_contiguous()
    assert torch.allclose(manual, fused, atol=1e-5)
    low = ln(x.bfloat16())                                    # reduced precision: fused kernel
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), manual, atol=3e-2)


def test_channel_layer_norm_backward_equals_autograd_of_the_formula() -> None:
    torch.manual_seed(10)
    ln = ChannelLayerNorm(6)
    _randomise(ln, 11)
    x = torch.randn(3, 6, 7, dtype=torch.float64).float().requires_grad_(True)
    g = torch.randn(3, 6, 7)
    out = ln(x)                                               # (B, C, T) memory, custom backward
    xd = x.detach().double().requires_grad_(True)
    wd, bd = (p.detach().double().requires_grad_(True) for p in (ln.weight, ln.bias))
    mu = xd.mean(1, keepdim=True)
    ref = (xd - mu) / torch.sqrt(((xd - mu) ** 2).mean(1, keepdim=True) + 1e-5) * wd + bd
    assert torch.allclose(out.double(), ref, atol=1e-6)
    out.backward(g)
    ref.backward(g.double())
    for mine, theirs in ((x.grad, xd.grad), (ln.weight.grad, wd.grad), (ln.bias.grad, bd.grad)):
        assert torch.allclose(mine.double(), theirs, atol=1e-5)


@pytest.mark.parametrize("kernel, groups, bias", [(3, 1, True), (1, 1, False), (5, 4, True)])
def test_conv1d_btc_is_the_conv_on_channels_last_memory(kernel: int, groups: int, bias: bool) -> None:
    torch.manual_seed(9)
    conv = torch.nn.Conv1d(8, 12, kernel, padding=kernel // 2, groups=groups, bias=bias)
    x = torch.randn(3, 10, 8, requires_grad=True)             # (B, T, C_in)
    out = conv1d_btc(conv, x)
    assert out.shape == (3, 10, 12) and out.is_contiguous()
    ref = conv(x.detach().transpose(1, 2).requires_grad_())
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, conv.weight), g)
    rx = torch.autograd.grad(conv(x.transpose(1, 2)), (x, conv.weight), g.transpose(1, 2))
    assert torch.allclose(gx, rx[0], atol=1e-5) and torch.allclose(gw, rx[1], atol=1e-5)
    assert gx.is_contiguous()                                  # no layout change in backward
