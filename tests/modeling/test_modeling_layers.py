"""Unit tests of libs/modeling/{layers,attention,blocks,backbone,points}.py against direct formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from libs.modeling.attention import LocalMaskedMHCA, MaskedMHCA
from libs.modeling.backbone import SingleStreamBackbone, sinusoid_table
from libs.modeling.blocks import TransformerBlock
from libs.modeling.layers import AffineDropPath, ChannelLayerNorm, MaskedConv1D, drop_path
from libs.modeling.points import PointGenerator


from model_helpers import padding_mask as _mask  # noqa: E402
from model_helpers import randomise as _randomise  # noqa: E402


# ----------------------------------------------------------------------------- layers

def test_channel_layer_norm_formula() -> None:
    torch.manual_seed(0)
    ln = ChannelLayerNorm(6)
    _randomise(ln)
    x = torch.randn(2, 6, 9, dtype=torch.float64).float()
    x[:, :, -2:] = 0.0
    y = ln(x)
    xd = x.double()
    mu = xd.mean(1, keepdim=True)
    var = ((xd - mu) ** 2).mean(1, keepdim=True)
    ref = (xd - mu) / torch.sqrt(var + 1e-5) * ln.weight.double() + ln.bias.double()
    assert ln.weight.shape == (1, 6, 1) and ln.bias.shape == (1, 6, 1)
    assert torch.allclose(y.double(), ref, atol=1e-5)
    assert torch.equal(y[:, :, -1:], ln.bias.expand(2, 6, 1))     # LN(0) == bias exactly


def test_masked_conv_stride_mask_and_zero_output() -> None:
    conv = MaskedConv1D(3, 4, 3, stride=2)
    assert conv.conv.padding == (1,) and torch.all(conv.conv.bias == 0)
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)[None, None]
    out, out_mask = conv(torch.randn(1, 3, 8), mask)
    assert out.shape == (1, 4, 4)
    assert out_mask.tolist() == [[[True, True, True, False]]]
    assert torch.all(out[..., 3] == 0)


def test_drop_path_and_affine_drop_path() -> None:
    x = torch.ones(64, 2, 3)
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    torch.manual_seed(0)
    y = drop_path(x, 0.5, training=True)
    per_sample = y[:, 0, 0]
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(y == per_sample[:, None, None])
    dp = AffineDropPath(2, drop_prob=0.5)
    assert dp.scale.shape == (1, 2, 1) and torch.allclose(dp.scale, torch.full((1, 2, 1), 1e-4))
    dp.train()
    dp.stochastic_depth = False
    assert torch.equal(dp(x), x * dp.scale)
    dp.eval()
    dp.stochastic_depth = True
    assert torch.equal(dp(x), x * dp.scale)


# ----------------------------------------------------------------------------- attention

def _naive_attention(att_mod, x: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    """Dense O(T^2) masked band attention (window <= 1: global) on the module's own q/k/v."""
    q, k, v, q_mask, kv_mask = att_mod._qkv(x, mask)            # (B, h, T, d), (B, 1, T)
    t = q.shape[2]
    scores = (q * att_mod.scale) @ k.transpose(-2, -1)          # (B, h, T, T)
    keys_ok = kv_mask[:, :, None, :]                            # (B, 1, 1, T)
    if window > 1:
        w = window // 2
        i = torch.arange(t)[:, None]
        j = torch.arange(t)[None, :]
        if getattr(att_mod, "use_rel_pe", False):
            h = q.shape[1]
            rel = att_mod.rel_pe.view(h, window)[:, (j - i).clamp(-w, w) + w]   # (h, T, T)
            scores = scores + rel[None]
        scores = scores + (~keys_ok).float() * -1e4
        scores = scores.masked_fill((j - i).abs() > w, float("-inf"))
        p = torch.softmax(scores, -1).masked_fill(~kv_mask[:, :, :, None], 0.0)
        out = p @ v
    else:
        p = torch.softmax(scores.masked_fill(~keys_ok, float("-inf")), -1)
        out = p @ (v * kv_mask[:, :, :, None].float())
    return att_mod._merge(out, q_mask)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("rel_pe", [False, True])
def test_local_attention_matches_naive_band(stride: int, rel_pe: bool) -> None:
    torch.manual_seed(1)
    att = LocalMaskedMHCA(16, 4, window_size=7, stride=stride, use_rel_pe=rel_pe)
    _randomise(att, seed=2)
    x = torch.randn(3, 16, 24)
    mask = _mask([24, 17, 5], 24)
    out, out_mask = att(x, mask)
    assert out.shape == (3, 16, 24 // stride) and torch.equal(out_mask, mask[:, :, ::stride])
    ref = _naive_attention(att, x, mask, 7)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_local_attention_with_window_covering_sequence_equals_global() -> None:
    torch.manual_seed(3)
    loc = LocalMaskedMHCA(16, 2, window_size=25, stride=1)
    glob = MaskedMHCA(16, 2, stride=1)
    _randomise(loc, seed=4)
    glob.load_state_dict(loc.state_dict())
    x = torch.randn(2, 16, 12)
    mask = _mask([12, 7], 12)
    out_l, _ = loc(x, mask)
    out_g, _ = glob(x, mask)
    assert torch.allclose(out_l, out_g, atol=1e-5)
    assert torch.allclose(out_g, _naive_attention(glob, x, mask, -1), atol=1e-5)


# ----------------------------------------------------------------------------- blocks

@pytest.mark.parametrize("window", [7, -1])
def test_strided_block_lengths_and_masks(window: int) -> None:
    torch.manual_seed(5)
    blk = TransformerBlock(16, 4, window_size=window, stride=2, droppath=0.1)
    _randomise(blk, seed=6)
    blk.eval()
    x = torch.randn(2, 16, 24)
    mask = _mask([24, 13], 24)
    x = x * mask
    y, m = blk(x, mask)
    assert y.shape == (2, 16, 12)
    assert torch.equal(m, mask[:, :, ::2])
    assert torch.all(y[1, :, 7:] == 0)                          # (13 + 1) // 2 = 7 valid outputs
    # the skip path is the k3/s2/p1 max-pool of the raw input
    assert isinstance(blk.pool_skip, torch.nn.MaxPool1d)
    assert blk.pool_skip.kernel_size == 3 and blk.pool_skip.padding == 1


def test_block_without_droppath_has_no_layer_scale() -> None:
    keys = TransformerBlock(8, 2, window_size=7, droppath=0.0).state_dict().keys()
    assert not any("drop_path" in k for k in keys)
    assert {"mlp.0.weight", "mlp.3.bias"} <= set(keys)


# ----------------------------------------------------------------------------- position embedding

def test_sinusoid_table_formula() -> None:
    table = sinusoid_table(10, 6)
    assert table.shape == (1, 6, 10) and table.dtype == torch.float32
    t, c = 7, 3
    expected = math.cos(t / 10000 ** (2 * (c // 2) / 6)) / math.sqrt(6)
    assert abs(table[0, c, t].item() - expected) < 1e-7


def test_pe_stretch_at_inference() -> None:
    bb = SingleStreamBackbone(input_groups=[4], group_proj_dims=None, embd_dim=8, n_head=2,
                              max_seq_len=192, backbone_arch=(2, 2, 5), scale_factor=2,
                              n_mha_win_size=[7, 7, 7, 7, 7, -1], embd_kernel_size=3,
                              embd_with_ln=True, use_abs_pe=True, use_rel_pe=False, dropout=0.0,
                              droppath=0.0)
    table = bb.pos_embd
    bb.eval()
    assert torch.equal(bb.position_embedding(288),
                       F.interpolate(table, size=288, mode="linear", align_corners=False))
    assert torch.equal(bb.position_embedding(192), table)
    assert torch.equal(bb.position_embedding(96), table[:, :, :96])
    bb.train()
    assert torch.equal(bb.position_embedding(96), table[:, :, :96])
    with pytest.raises(AssertionError):
        bb.position_embedding(288)


# ----------------------------------------------------------------------------- points

def test_point_generator_rows_and_limit() -> None:
    gen = PointGenerator(192, [1, 32], [[0, 4], [64, 10000]], max_buffer_len_factor=1.0)
    pts = gen([192, 6])
    assert pts[1].tolist() == [[float(t), 64.0, 10000.0, 32.0] for t in range(0, 192, 32)]
    assert pts[0].dtype == torch.float32 and pts[0].shape == (192, 4)
    assert len(gen.state_dict()) == 0                          # non-persistent buffers
    with pytest.raises(ValueError, match="max_buffer_len_factor"):
        gen([288, 9])
