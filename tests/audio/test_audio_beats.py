"""libs/audio/beats.py: golden tensors of the official BEATs code, strict checkpoint loading,
the full-size iter3+ layout, relative-position buckets and padding masks."""
import copy

import pytest
import torch

from libs.audio.beats import beats_from_checkpoint, load_beats, random_checkpoint, relative_position_bucket
from libs.audio.beats_config import ITER3_PLUS_AS2M
from libs.audio.fbank import beats_fbank
from libs.common.errors import UserError

TOL = 1e-4


def _release_layout(layers: int = 12) -> dict:
    """Key -> shape of the released BEATs_iter3_plus_AS2M.pt state dict (written out from the
    documented layout, independently of our module)."""
    shapes = {"patch_embedding.weight": (512, 1, 16, 16), "layer_norm.weight": (512,),
              "layer_norm.bias": (512,),
              "post_extract_proj.weight": (768, 512), "post_extract_proj.bias": (768,),
              "encoder.pos_conv.0.weight_g": (1, 1, 128), "encoder.pos_conv.0.weight_v": (768, 48, 128),
              "encoder.pos_conv.0.bias": (768,), "encoder.layer_norm.weight": (768,),
              "encoder.layer_norm.bias": (768,)}
    per_layer = {"self_attn.relative_attention_bias.weight": (320, 12),
                 "self_attn.grep_linear.weight": (8, 64),
                 "self_attn.grep_linear.bias": (8,), "self_attn.grep_a": (1, 12, 1, 1),
                 "fc1.weight": (3072, 768), "fc1.bias": (3072,), "fc2.weight": (768, 3072),
                 "fc2.bias": (768,)}
    for proj in ("q", "k", "v", "out"):
        per_layer[f"self_attn.{proj}_proj.weight"] = (768, 768)
        per_layer[f"self_attn.{proj}_proj.bias"] = (768,)
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        per_layer[f"{norm}.weight"] = (768,)
        per_layer[f"{norm}.bias"] = (768,)
    for i in range(layers):
        shapes.update({f"encoder.layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def _tiny_ckpt(golden) -> dict:
    return {"cfg": copy.deepcopy(golden["cfg"]), "model": {k: v.clone() for k, v in golden["model"].items()}}


def test_golden_intermediates_and_features(golden, tiny_model):
    for name in golden["names"]:
        it = golden["items"][name]
        with torch.no_grad():
            fb = beats_fbank(it["wave"])[None]                                   # (1, F, 128)
            patches = tiny_model.patch_embed(fb)[0]                              # (32, T', 8)
            x = tiny_model.embed(fb)                                             # (1, T, 64)
            t = x.shape[1]
            enc_in = tiny_model.encoder.embed_positions(x, None)[0]
            rel = tiny_model.encoder.relative_bias(t, torch.device("cpu"))
            feats = tiny_model(fb)[0]
        assert patches.shape == it["patch_embedding"].shape
        assert (patches - it["patch_embedding"]).abs().max() <= TOL, name
        assert torch.equal(patches.flatten(1).T, patches.permute(1, 2, 0).reshape(-1, 32))  # row 8t + f
        assert (x[0] - it["post_extract_proj"]).abs().max() <= TOL, name
        assert (enc_in - it["encoder_ln"]).abs().max() <= TOL, name
        assert (rel - it["rel_pos_bias"]).abs().max() <= TOL, name
        assert feats.shape == it["features"].shape == (8 * (it["fbank"].shape[0] // 16), 64)
        assert (feats - it["features"]).abs().max().item() <= TOL, name
        pos = torch.arange(t)
        assert torch.equal(relative_position_bucket(pos[None] - pos[:, None], 64, 100), it["rel_pos_bucket"])


def test_extract_from_audio_matches_golden(tiny_model, golden):
    it = golden["items"]["noise"]
    assert (tiny_model.extract(it["wave"][None])[0] - it["features"]).abs().max() <= TOL


def test_bucket_spot_values_of_the_release():
    n = torch.tensor([0, 1, 79, 80, 83, 100, 200, 400, 495, 777, 778, 800, 5000])
    expect = torch.tensor([0, 1, 79, 80, 81, 87, 111, 135, 143, 158, 159, 159, 159])
    assert torch.equal(relative_position_bucket(-n, 320, 800), expect)             # keys before the query
    assert torch.equal(relative_position_bucket(n[1:], 320, 800), expect[1:] + 160)  # keys after it


def test_settings_come_from_cfg(golden, tiny_model):
    wave = golden["items"]["noise"]["wave"][None]
    ckpt = _tiny_ckpt(golden)
    ckpt["cfg"]["max_distance"] = 1280                       # the class default: different buckets
    other = beats_from_checkpoint(ckpt, "x")
    assert (other.extract(wave) - tiny_model.extract(wave)).abs().max() > 1e-3
    ckpt = _tiny_ckpt(golden)
    ckpt["cfg"]["deep_norm"] = False
    assert (beats_from_checkpoint(ckpt, "x").extract(wave) - tiny_model.extract(wave)).abs().max() > 1e-3
    ckpt = {"cfg": {}, "model": golden["model"]}            # defaults: 12 layers, width 768, patch -1
    with pytest.raises(UserError, match="input_patch_size is -1"):
        beats_from_checkpoint(ckpt, "x")


def test_full_size_release_layout_loads_strictly_and_is_deterministic():
    layout = _release_layout()
    assert len(layout) == 250
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) * 0.02 for k, s in layout.items()}
    for k in state:
        if k.endswith("layer_norm.weight"):
            state[k] += 1.0
        if k.endswith("relative_attention_bias.weight"):
            state[k] = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    ckpt = {"cfg": dict(ITER3_PLUS_AS2M), "model": state, "label_dict": {0: "Speech"}}
    model = beats_from_checkpoint(ckpt, "full")
    assert set(model.state_dict()) == set(layout)
    assert sum(p.numel() for p in model.parameters()) == 90_311_792      # one shared bias table
    wave = 0.1 * torch.randn(1, 32000, generator=gen)                    # 2 s
    a, b = model.extract(wave), model.extract(wave)
    assert a.shape == (1, 96, 768) and a.dtype == torch.float32 and torch.equal(a, b)
    again = beats_from_checkpoint(ckpt, "full").extract(wave)
    assert torch.equal(a, again) and torch.isfinite(a).all()
    short = model.extract(wave[:, :2800])
    assert short.shape == (1, 8, 768)
    # random_checkpoint (benchmarks) produces exactly this layout
    rc = random_checkpoint(ITER3_PLUS_AS2M, seed=1)
    assert {k: tuple(v.shape) for k, v in rc["model"].items()} == layout


def test_loaded_file_and_bad_checkpoints(tiny_ckpt, golden, tmp_path):
    model = load_beats(tiny_ckpt)
    assert model.out_dim == 64 and not model.training
    bad = [
        ({"model": golden["model"]}, "not a BEATs checkpoint"),
        ([1, 2], "not a BEATs checkpoint"),
        ({"cfg": golden["cfg"], "model": {k: v for k, v in golden["model"].items() if "fc1" not in k}},
         "missing key encoder.layers.0.fc1.bias"),
        ({"cfg": golden["cfg"], "model": {**golden["model"], "extra.weight": torch.zeros(1)}},
         "unexpected key extra.weight"),
        ({"cfg": golden["cfg"], "model": {**golden["model"], "layer_norm.bias": torch.zeros(33)}},
         r"layer_norm.bias has shape \(33,\), expected \(32,\)"),
        ({"cfg": golden["cfg"], "model": {**golden["model"],
          "encoder.layers.1.self_attn.relative_attention_bias.weight": torch.zeros(64, 4)}},
         "differs from layer 0"),
        ({"cfg": {**golden["cfg"], "encoder_layers": "2"}, "model": golden["model"]},
         "cfg.encoder_layers is '2', expected int"),
        ({"cfg": {**golden["cfg"], "layer_norm_first": True, "deep_norm": False}, "model": golden["model"]},
         "layer_norm_first is True"),
        ({"cfg": {**golden["cfg"], "encoder_layers": 3}, "model": golden["model"]},
         "missing key encoder.layers.2"),
    ]
    for i, (obj, msg) in enumerate(bad):
        path = tmp_path / f"bad{i}.pt"
        torch.save(obj, path)
        with pytest.raises(UserError, match=msg) as err:
            load_beats(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load checkpoint .*junk.pt"):
        load_beats(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="checkpoint not found"):
        load_beats(tmp_path / "nope.pt")


def test_padding_mask_gives_per_row_results(tiny_model, golden):
    items = [golden["items"][n] for n in ("noise", "tone440", "loud")]   # 15, 6, 3 patches
    fbanks = [beats_fbank(it["wave"])[: 16 * (it["fbank"].shape[0] // 16)] for it in items]
    batch = torch.zeros(3, fbanks[0].shape[0], 128)
    for i, f in enumerate(fbanks):
        batch[i, : f.shape[0]] = f
    with torch.no_grad():
        out = tiny_model(batch, torch.tensor([f.shape[0] // 16 for f in fbanks]))
        unmasked = tiny_model(batch)
    for i, it in enumerate(items):
        t = it["features"].shape[0]
        assert (out[i, :t] - it["features"]).abs().max() <= TOL
        assert torch.all(out[i, t:] == 0)
    assert (unmasked[1, :48] - items[1]["features"]).abs().max() > 1e-3    # the mask matters
