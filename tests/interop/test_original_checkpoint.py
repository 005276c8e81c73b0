"""Original checkpoints load (libs/interop/original_checkpoint.py, tools/convert_checkpoint.py, eval.py).

Original layouts are built from random values under exactly the original key names and shapes:
our Detector's state dict for the original configs with ``module.`` added, cross-checked against
a hand-written list of original keys and shapes (docs/numerics.md s.4.11) so that the test cannot
pass by construction. The golden tiny model (real original-layout weights and detections) runs
end to end: original checkpoint -> tools/convert_checkpoint.py -> eval.py -> submission.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
import yaml

from libs.config.loader import resolve_config
from libs.common.errors import UserError
from libs.modeling import Detector
from libs.interop.original_checkpoint import (convert_original_checkpoint, convert_state_dict,
                                    export_original_state_dict, is_original_checkpoint)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden" / "tiny_actionformer.pt"
TOOL = ROOT / "tools" / "convert_checkpoint.py"

_MODEL = {"backbone_arch": [2, 2, 5], "n_mha_win_size": [7, 7, 7, 7, 7, -1], "neck": "identity",
          "max_buffer_len_factor": 1.0, "use_abs_pe": True, "droppath": 0.1}
_BEATS = {"name": "beats", "path": "b", "dim": 768}
_UMT = {"name": "umt", "path": "u", "dim": 1024}
_VMAE = {"name": "videomae", "path": "v", "dim": 1024}
RAW = {  # the original configs' models (docs/numerics.md s.4.11 table)
    "tsl": {"task": "sound_localisation",
            "dataset": {"annotation_file": "a.json", "num_classes": 12,
                        "modalities": [dict(_BEATS, primary=True), _UMT]},
            "model": dict(_MODEL, backbone="single_stream", embd_dim=512, n_head=8)},
    "tal237": {"task": "action_localisation",
               "dataset": {"annotation_file": "a.json", "num_classes": 63,
                           "modalities": [_VMAE, dict(_UMT, primary=True), dict(_BEATS, rows_per_step=2)]},
               "model": dict(_MODEL, backbone="fusion", embd_dim=1024, n_head=16)},
    "tal235": {"task": "action_localisation",
               "dataset": {"annotation_file": "a.json", "num_classes": 63,
                           "modalities": [dict(_UMT, primary=True), dict(_BEATS, rows_per_step=2)]},
               "model": dict(_MODEL, backbone="fusion", embd_dim=1024, n_head=16)},
    "tiny": {"task": "sound_localisation",
             "dataset": {"annotation_file": "a.json", "num_classes": 5, "max_seq_len": 192,
                         "modalities": [{"name": "f", "path": "f", "dim": 40, "primary": True}]},
             "model": dict(_MODEL, backbone="single_stream", embd_dim=32, n_head=4)},
}
INVENTORY = {"tsl": (229, 28_846_100), "tal237": (237, 118_538_823), "tal235": (235, 114_343_495)}


def _expected_keys(name: str) -> Dict[str, Tuple[int, ...]]:
    """Hand-written original names and shapes (docs/numerics.md s.4.11), not derived from our code."""
    E, C_in, K = {"tsl": (512, 1792, 12), "tal237": (1024, 3584, 63), "tal235": (1024, 2560, 63)}[name]
    keys = {
        "module.backbone.embd.0.conv.weight": (E, C_in, 3),
        "module.backbone.embd.1.conv.weight": (E, E, 3),
        "module.backbone.embd_norm.1.bias": (1, E, 1),
        "module.backbone.stem.0.ln1.weight": (1, E, 1),
        "module.backbone.stem.1.attn.query_conv.conv.weight": (E, 1, 3),
        "module.backbone.stem.0.attn.value_norm.weight": (1, E, 1),
        "module.backbone.branch.0.attn.key.weight": (E, E, 1),
        "module.backbone.branch.4.attn.proj.bias": (E,),
        "module.backbone.branch.2.mlp.0.weight": (4 * E, E, 1),
        "module.backbone.branch.4.mlp.3.weight": (E, 4 * E, 1),
        "module.backbone.branch.3.drop_path_mlp.scale": (1, E, 1),
        "module.neck.fpn_norms.5.weight": (1, E, 1),
        "module.cls_head.head.1.conv.weight": (E, E, 3),
        "module.cls_head.norm.0.bias": (1, E, 1),
        "module.cls_head.cls_head.conv.weight": (K, E, 3),
        "module.cls_head.cls_head.conv.bias": (K,),
        "module.reg_head.scale.5.scale": (),
        "module.reg_head.offset_head.conv.weight": (2, E, 3),
        "module.reg_head.offset_head.conv.bias": (2,),
    }
    proj = {"tsl": [], "tal237": [1024, 1024, 768, 768], "tal235": [1024, 768, 768]}[name]
    for i, d in enumerate(proj):
        keys[f"module.backbone.proj.{i}.conv.weight"] = (d, d, 1)
        keys[f"module.backbone.proj.{i}.conv.bias"] = (d,)
    return keys


@functools.lru_cache(maxsize=None)
def _cfg(name: str):
    return resolve_config(RAW[name], f"test:{name}")


@functools.lru_cache(maxsize=None)
def _meta_model(name: str) -> Detector:
    with torch.device("meta"):
        return Detector.from_config(_cfg(name))


@functools.lru_cache(maxsize=None)
def _real_model(name: str) -> Detector:   # built at most once per session (the TAL one is 118M)
    return Detector.from_config(_cfg(name)).eval()


@functools.lru_cache(maxsize=None)
def _golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


def _random_original(model: Detector, seed: int) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ours = model.state_dict()
    return {f"module.{k}": torch.randn(v.shape, generator=gen) * 0.02 for k, v in ours.items()}


def _tiny_original() -> Dict[str, torch.Tensor]:
    return dict(_golden()["state_dict_original_layout"])


# ----------------------------------------------------------------------------- layout

@pytest.mark.parametrize("name", sorted(INVENTORY))
def test_original_key_inventory(name: str) -> None:
    original = export_original_state_dict(_meta_model(name).state_dict())
    n_keys, n_params = INVENTORY[name]
    assert len(original) == n_keys
    assert sum(v.numel() for v in original.values()) == n_params
    assert all(k.startswith("module.") for k in original)
    for key, shape in _expected_keys(name).items():
        assert key in original, key
        assert tuple(original[key].shape) == shape, key
    assert [k for k in original if "backbone.proj." in k] == \
        [k for k in _expected_keys(name) if "backbone.proj." in k]   # projections in channel order
    converted = convert_state_dict(original, _meta_model(name), name)   # shapes only, on meta
    assert list(converted) == [k[len("module."):] for k in original]


def test_golden_layout_is_original() -> None:
    original = _tiny_original()
    assert len(original) == 229
    ckpt = {"epoch": 20, "state_dict": original, "state_dict_ema": original, "optimizer": {},
            "scheduler": {}}
    assert is_original_checkpoint(ckpt)
    converted = convert_state_dict(original, _real_model("tiny"), "golden")
    assert export_original_state_dict(converted) == original
    assert list(export_original_state_dict(converted)) == list(original)


@pytest.mark.parametrize("name", ["tsl", "tal237"])
def test_convert_load_forward_roundtrip(name: str) -> None:
    model = _real_model(name)
    raw = _random_original(model, seed=1)
    ema = dict(raw)
    ema["module.cls_head.cls_head.conv.bias"] = raw["module.cls_head.cls_head.conv.bias"] + 1.0
    ckpt = {"epoch": 20, "state_dict": raw, "state_dict_ema": ema, "optimizer": {}, "scheduler": {}}
    assert is_original_checkpoint(ckpt)
    out = convert_original_checkpoint(ckpt, model, _cfg(name), where=name)
    assert out["epoch"] == 20 and out["label_map"] == {} and "optimizer" not in out
    assert out["config"] == _cfg(name).to_dict()
    assert not is_original_checkpoint(out)
    assert export_original_state_dict(out["state_dict"]) == raw          # same tensors, same order
    assert list(export_original_state_dict(out["state_dict_ema"])) == list(ema)
    model.load_state_dict(out["state_dict_ema"], strict=True)
    sd = model.state_dict()
    assert torch.equal(sd["cls_head.cls_head.conv.bias"], ema["module.cls_head.cls_head.conv.bias"])
    assert torch.equal(sd["backbone.embd.0.conv.weight"], raw["module.backbone.embd.0.conv.weight"])
    C, K = _cfg(name).derived.input_dim, _cfg(name).dataset.num_classes
    feats = torch.randn(1, C, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        res = model(feats, torch.ones(1, 1, 192, dtype=torch.bool))
    assert res["cls_logits"][0].shape == (1, 192, K) and res["offsets"][5].shape == (1, 6, 2)
    assert all(torch.isfinite(x).all() for x in res["cls_logits"] + res["offsets"])


def test_is_original_checkpoint_rejects_ours() -> None:
    sd = {"backbone.embd.0.conv.weight": torch.zeros(1)}
    assert not is_original_checkpoint({"state_dict": sd, "config": {}, "ema": {}})
    assert not is_original_checkpoint({"state_dict": {"module.a": torch.zeros(1)}, "config": {}})
    assert not is_original_checkpoint({"state_dict": sd})
    assert not is_original_checkpoint({"state_dict": {}})
    assert not is_original_checkpoint({"epoch": 3})
    assert not is_original_checkpoint([1])


def test_missing_ema_uses_raw_weights(caplog: pytest.LogCaptureFixture) -> None:
    ckpt = {"epoch": 7, "state_dict": _tiny_original(), "optimizer": {}}
    with caplog.at_level("INFO"):
        out = convert_original_checkpoint(ckpt, _real_model("tiny"), _cfg("tiny"), where="x.pth.tar")
    assert out["state_dict_ema"] is out["state_dict"] and out["epoch"] == 7
    assert any("no state_dict_ema" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- mismatches

def _convert_error(sd: dict) -> str:
    with pytest.raises(UserError) as info:
        convert_state_dict(sd, _real_model("tiny"), "orig.pth.tar, state_dict")
    msg = str(info.value)
    assert "orig.pth.tar, state_dict" in msg
    return msg


def test_missing_key_is_named() -> None:
    sd = _tiny_original()
    del sd["module.reg_head.scale.3.scale"]
    msg = _convert_error(sd)
    assert "1 missing keys" in msg and "module.reg_head.scale.3.scale" in msg


def test_extra_key_is_named() -> None:
    sd = _tiny_original()
    sd["module.backbone.extra.weight"] = torch.zeros(3)
    msg = _convert_error(sd)
    assert "1 unexpected keys" in msg and "module.backbone.extra.weight" in msg


def test_wrong_shape_names_key_and_shapes() -> None:
    sd = _tiny_original()
    sd["module.cls_head.cls_head.conv.weight"] = torch.zeros(6, 32, 3)
    msg = _convert_error(sd)
    assert "module.cls_head.cls_head.conv.weight checkpoint (6, 32, 3) vs model (5, 32, 3)" in msg
    assert "dataset.num_classes" in msg


def test_many_problems_are_counted() -> None:
    sd = {k: v for k, v in _tiny_original().items() if ".branch." not in k}
    msg = _convert_error(sd)
    assert "135 missing keys" in msg and "(130 more)" in msg


def test_bad_layouts() -> None:
    sd = _tiny_original()
    sd["cls_head.cls_head.conv.bias"] = sd.pop("module.cls_head.cls_head.conv.bias")
    msg = _convert_error(sd)
    assert "without 'module.'" in msg and "cls_head.cls_head.conv.bias" in msg
    sd = _tiny_original()
    sd["module.neck.fpn_norms.0.weight"] = [1.0]
    assert "not tensors" in _convert_error(sd)
    with pytest.raises(UserError, match="no 'state_dict'"):
        convert_original_checkpoint({"epoch": 1}, _real_model("tiny"), None, "x")
    # a state dict without any prefix (an unwrapped original model) converts as well
    plain = {k[len("module."):]: v for k, v in _tiny_original().items()}
    assert list(convert_state_dict(plain, _real_model("tiny"), "plain")) == list(plain)


# ----------------------------------------------------------------------------- tool + eval.py

def _tool_main():
    spec = importlib.util.spec_from_file_location("convert_checkpoint_tool", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _write_tiny_dataset(root: Path) -> Path:
    """Golden eval items as a test split (stride grid, fps 30, stride 4); returns the config."""
    feats_dir = root / "feats"
    feats_dir.mkdir()
    ann = {}
    for item in _golden()["eval_items"]:
        vid = item["video_id"]
        np.save(feats_dir / f"{vid}.npy", item["feats"].T.contiguous().numpy().astype(np.float32))
        ann[vid] = {"metadata": {"video_id": vid, "split": "test",
                                 "num_frames": int(round(item["duration"] * 30)), "frame_rate": 30},
                    "sound_localisation": [], "action_localisation": []}
    (root / "ann.json").write_text(json.dumps(ann))
    cfg = {"task": "sound_localisation",
           "dataset": {"annotation_file": str(root / "ann.json"), "val_split": ["test"], "num_classes": 5,
                       "modalities": [{"name": "f", "path": str(feats_dir), "ext": ".npy", "dim": 40,
                                       "primary": True}],
                       "time_grid": "stride", "fps": 30, "feat_stride": 4, "num_frames": 4,
                       "force_upsampling": False, "max_seq_len": 192},
           "loader": {"eval_batch_size": 2, "num_workers": 0},
           "model": dict(_MODEL, backbone="single_stream", embd_dim=32, n_head=4),
           "test_cfg": {"pre_nms_topk": 5000, "nms": {"max_seg_num": 500, "min_score": 0.001,
                                                      "sigma": 0.4, "multiclass": True,
                                                      "method": "gaussian"}}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("compat_ckpt")
    cfg_path = _write_tiny_dataset(root)
    sd = _tiny_original()
    orig = root / "original.pth.tar"
    torch.save({"epoch": 20, "state_dict": sd, "state_dict_ema": sd, "optimizer": {}, "scheduler": {}}, orig)
    out = root / "converted.pth.tar"
    proc = subprocess.run([sys.executable, str(TOOL), str(orig), str(out), "--config", str(cfg_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "cfg": cfg_path, "orig": orig, "out": out, "log": proc.stderr}


def test_tool_converts(e2e: dict) -> None:
    assert "229 keys" in e2e["log"] and "113,389 parameters" in e2e["log"]
    ckpt = torch.load(e2e["out"], weights_only=True)
    assert ckpt["epoch"] == 20 and ckpt["label_map"] == {} and "optimizer" not in ckpt
    assert ckpt["config"]["model"]["embd_dim"] == 32
    assert export_original_state_dict(ckpt["state_dict_ema"]).keys() == _tiny_original().keys()
    for k, v in export_original_state_dict(ckpt["state_dict"]).items():
        assert torch.equal(v, _tiny_original()[k]), k


def test_tool_refuses(e2e: dict) -> None:
    main = _tool_main()
    base = [str(e2e["orig"]), str(e2e["out"]), "--config", str(e2e["cfg"])]
    with pytest.raises(UserError, match="output checkpoint exists"):
        main(base)
    with pytest.raises(UserError, match="already in this project's format"):
        main([str(e2e["out"]), str(e2e["root"] / "again.pth.tar"), "--config", str(e2e["cfg"])])
    with pytest.raises(UserError, match=r"module\.cls_head\.cls_head\.conv\.weight checkpoint \(5, 32, 3\) "
                                        r"vs model \(6, 32, 3\)"):
        main([str(e2e["orig"]), str(e2e["root"] / "bad.pth.tar"), "--config", str(e2e["cfg"]),
              "--opt", "dataset.num_classes=6"])
    assert not (e2e["root"] / "bad.pth.tar").exists()
    assert main(base + ["--overwrite"]) == 0


def _run_eval(e2e: dict, ckpt: Path, name: str) -> dict:
    out = e2e["root"] / name
    proc = subprocess.run([sys.executable, "eval.py", str(e2e["cfg"]), str(ckpt), "--saveonly", "--out",
                           str(out), "--device", "cpu", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check_detections(entries: list, ref: dict, vid: str) -> None:
    """Same set: label equal, score within 1e-5, segment within 1e-4 s; only scores within 1e-5 of
    the cut (min_score, or the lowest kept score when max_seg_num is reached) may differ."""
    r_seg = ref["segments"].double().numpy().reshape(-1, 2)
    r_score = ref["scores"].double().numpy()
    r_lab = ref["labels"].numpy()
    o_seg = np.array([e["timestamps"] for e in entries], dtype=np.float64).reshape(-1, 2)
    o_score = np.array([float(e["score"]) for e in entries])
    o_lab = np.array([int(e["label"]) for e in entries])
    used = np.zeros(len(entries), dtype=bool)
    lost = []
    for i in range(len(r_score)):
        ok = (~used) & (o_lab == r_lab[i]) & (np.abs(o_score - r_score[i]) <= 1e-5) & \
             (np.abs(o_seg - r_seg[i]).max(axis=1) <= 1e-4)
        idx = np.flatnonzero(ok)
        if len(idx):
            used[idx[np.argmin(np.abs(o_score[idx] - r_score[i]))]] = True
        else:
            lost.append(r_score[i])
    extra = list(o_score[~used])
    cut = max(0.001, min(r_score.min(), o_score.min()) if len(r_score) == 500 else 0.001)
    bad = [s for s in lost + extra if s > cut + 1e-5]
    assert not bad and len(lost) + len(extra) <= 10, (vid, len(lost), len(extra), bad[:5])


def _check_submission(sub: dict) -> None:
    golden = _golden()
    assert sorted(sub) == sorted(it["video_id"] for it in golden["eval_items"])
    for item, ev in zip(golden["eval_items"], golden["eval"]):
        _check_detections(sub[item["video_id"]]["sound_localisation"], ev["detections"], item["video_id"])


def test_eval_on_converted_checkpoint(e2e: dict) -> None:
    _check_submission(_run_eval(e2e, e2e["out"], "converted_results.json"))


def test_eval_on_original_checkpoint(e2e: dict) -> None:
    _check_submission(_run_eval(e2e, e2e["orig"], "original_results.json"))
