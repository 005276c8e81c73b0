"""Tests of libs/config/original.py and tools/convert_config.py: original-project configs load."""
from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from libs.config.original import convert_original_config, is_original_config
from libs.config.loader import load_config, resolve_config
from libs.common.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "original_configs"
TOOL = REPO / "tools" / "convert_config.py"
TSL_TRAIN = DATA / "perception_tsl_multi_train.yaml"
TSL_TEST = DATA / "perception_tsl_multi_test.yaml"
TAL_EGO = DATA / "perception_tal_mm_multi_umt_ego4dverb_train.yaml"
TAL_UMT = DATA / "perception_tal_mm_multi_umt_valid.yaml"
ALL = [TSL_TRAIN, TSL_TEST, TAL_EGO, TAL_UMT]


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Relative feature paths (./data/pt/...) resolve under an empty folder."""
    monkeypatch.chdir(tmp_path)


def raw_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def convert(raw: dict, source: str = "old.yaml") -> tuple:
    out, notes = convert_original_config(raw, source)
    return resolve_config(out, source).to_dict(), notes


def error_of(raw: dict) -> str:
    with pytest.raises(UserError) as info:
        convert(raw)
    return str(info.value)


def load_tool():
    spec = importlib.util.spec_from_file_location("convert_config", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- detection

def test_detects_original_layout_only():
    for path in ALL:
        assert is_original_config(raw_of(path))
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert not is_original_config(raw_of(path)), path
    assert not is_original_config(None) and not is_original_config([1])


# ----------------------------------------------------------------------------- the four seed configs

def check_common(cfg: dict, notes: list) -> None:
    assert notes and all(isinstance(n, str) and n for n in notes)
    assert cfg["seed"] == 1234567891 and cfg["output_folder"] == "./ckpt/"
    ds, model, tc = cfg["dataset"], cfg["model"], cfg["test_cfg"]["nms"]
    assert ds["time_grid"] == "stride" and ds["max_seq_len"] == 192 and ds["force_upsampling"] is True
    assert ds["trunc_thresh"] == 0.5 and ds["crop_ratio"] == [0.9, 1.0]
    assert ds["on_missing"] == "error" and ds["end_tolerance"] >= 1e6
    assert model["neck"] == "identity" and model["max_buffer_len_factor"] == 1.0
    assert model["n_mha_win_size"] == [7, 7, 7, 7, 7, -1] and model["use_abs_pe"] is True
    assert model["backbone_arch"] == [2, 2, 5] and model["droppath"] == 0.1
    assert (cfg["test_cfg"]["pre_nms_topk"], tc["max_seg_num"], tc["min_score"], tc["sigma"]) == \
        (5000, 500, 0.001, 0.4)
    assert tc["multiclass"] is True and tc["method"] == "gaussian"
    assert cfg["train_cfg"]["init_loss_norm"] == 250 and cfg["opt"]["clip_grad_l2norm"] == 1.0
    assert cfg["train_cfg"]["center_sample"] == "radius" and cfg["train_cfg"]["center_sample_radius"] == 1.5
    assert (cfg["opt"]["learning_rate"], cfg["opt"]["epochs"], cfg["opt"]["weight_decay"]) == \
        (0.001, 50, 0.05)
    assert cfg["opt"]["warmup_epochs"] == 5 and cfg["opt"]["eta_min"] == 1e-8
    assert cfg["loader"]["batch_size"] == 16 and cfg["loader"]["num_workers"] == 4
    # EMA decay warm-up on, unlike the original (docs/differences.md s.2.3), and the notes say so
    assert cfg["train"]["ema_warmup"] is True and cfg["train"]["eval_freq"] == 0
    assert cfg["train"]["ema_decay"] == 0.999
    assert any("train.ema_warmup true" in n and "train.ema_warmup=false" in n for n in notes)


@pytest.mark.parametrize("path,split,ann", [
    (TSL_TRAIN, "valid", "./data/pt/challenge_sound_localisation_train.json"),
    (TSL_TEST, "test", "./data/pt/all_test.json")])
def test_tsl_multi(path, split, ann):
    cfg, notes = convert(raw_of(path), str(path))
    check_common(cfg, notes)
    ds, model = cfg["dataset"], cfg["model"]
    assert cfg["task"] == "sound_localisation" and ds["num_classes"] == 12
    assert ds["annotation_file"] == ann
    assert ds["train_split"] == ["train"] and ds["val_split"] == [split]
    assert (ds["fps"], ds["feat_stride"], ds["num_frames"]) == (768.0, 16.0, 16.0)
    audio, video = ds["modalities"]
    assert (audio["name"], audio["dim"], audio["ext"], audio["primary"]) == ("audio", 768, ".npy", True)
    assert audio["path"].startswith("./data/pt/sound_localisation_beats/")
    assert (video["name"], video["dim"], video["ext"], video["primary"], video["resample"]) == \
        ("video", 1024, ".pt", False, "endpoint")
    assert video["path"] == "./data/pt/tal_umt_large_sthv2_perception_test_ft1_feature_s2/"
    assert (cfg["derived"]["input_dims"], cfg["derived"]["input_dim"]) == ([768, 1024], 1792)
    assert model["backbone"] == "single_stream" and model["proj_dims"] is None
    assert (model["embd_dim"], model["n_head"], model["fpn_dim"], model["head_dim"]) == (512, 8, 512, 512)
    assert any("assumed" in n and "1024" in n for n in notes)      # no video file to read
    assert any("file_prefix" in n for n in notes)


@pytest.mark.parametrize("path,families", [
    (TAL_EGO, [("videomae", "tal_videomae_large_ego4d_verb_feature_s4"),
               ("umt", "tal_umt_large_sthv2_feature_s4")]),
    (TAL_UMT, [("umt", "tal_umt_large_sthv2_feature_s4")])])
def test_tal_mm(path, families):
    cfg, notes = convert(raw_of(path), str(path))
    check_common(cfg, notes)
    ds, model = cfg["dataset"], cfg["model"]
    assert cfg["task"] == "action_localisation" and ds["num_classes"] == 63
    assert (ds["fps"], ds["feat_stride"], ds["num_frames"]) == (15.0, 2.0, 2.0)
    mods = ds["modalities"]
    assert [(m["name"], m["path"]) for m in mods[:-1]] == [(n, f"./data/pt/{f}") for n, f in families]
    assert [m["primary"] for m in mods] == [True] + [False] * len(families)
    assert [m["resample"] for m in mods[1:-1]] == ["centre"] * (len(families) - 1)
    assert all(m["dim"] == 1024 and m["ext"] == ".pt" and m["rows_per_step"] == 1 for m in mods[:-1])
    audio = mods[-1]
    assert (audio["name"], audio["dim"], audio["ext"], audio["rows_per_step"], audio["resample"]) == \
        ("audio", 768, ".npy", 2, "endpoint")
    groups = [1024] * len(families) + [768, 768]
    assert cfg["derived"]["input_dim"] == sum(groups)
    assert model["backbone"] == "fusion" and model["proj_dims"] == groups
    assert (cfg["derived"]["input_groups"], cfg["derived"]["group_proj_dims"]) == (groups, groups)
    assert (model["embd_dim"], model["n_head"], model["fpn_dim"], model["head_dim"]) == \
        (1024, 16, 1024, 1024)
    assert any("longest" in n for n in notes) and any("model.input_dim" in n for n in notes)


@pytest.mark.parametrize("path,n_keys,n_params", [
    (TSL_TRAIN, 229, 28_846_100), (TAL_UMT, 235, 114_343_495), (TAL_EGO, 237, 118_538_823)])
def test_converted_configs_build_the_released_architectures(path, n_keys, n_params):
    """State-dict inventories of the released checkpoints (docs/numerics.md s.4.11)."""
    from libs.modeling.detector import Detector
    with torch.device("meta"):
        model = Detector.from_config(load_config(path))
    assert len(model.state_dict()) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_load_config_reads_original_configs():
    for path in ALL:
        cfg = load_config(path).to_dict()
        assert cfg == convert(raw_of(path), str(path))[0]


def test_original_ema_stays_available_through_opt():
    cfg = load_config(TSL_TRAIN, ["train.ema_warmup=false"])
    assert cfg.train.ema_warmup is False and cfg.train.ema_decay == 0.999


def test_tsl_video_dim_read_from_a_feature_file(tmp_path):
    folder = tmp_path / "video"
    folder.mkdir()
    torch.save(torch.zeros(3, 512), folder / "video_1.pt")
    raw = raw_of(TSL_TRAIN)
    raw["dataset"]["mm_feat_folder"] = str(folder)
    cfg, notes = convert(raw)
    assert [m["dim"] for m in cfg["dataset"]["modalities"]] == [1280, 512]
    assert any("read from a file" in n for n in notes)


def test_single_modality_variants():
    raw = raw_of(TSL_TRAIN)                  # the DM-audio TSL config shape
    raw["dataset"].update(input_modality="audio", input_dim=256, default_fps=30, mm_feat_folder=None)
    cfg, _ = convert(raw)
    assert [(m["name"], m["dim"], m["primary"]) for m in cfg["dataset"]["modalities"]] == \
        [("audio", 256, True)]
    assert cfg["dataset"]["fps"] == 30.0
    raw = raw_of(TAL_UMT)                    # TAL video only: no stacked audio rows
    raw["dataset"].update(input_modality="video", input_dim=[1024])
    raw["model"]["embd_dim"] = [512]
    cfg, notes = convert(raw)
    assert [m["name"] for m in cfg["dataset"]["modalities"]] == ["umt"]
    assert cfg["model"]["proj_dims"] == [512] and cfg["derived"]["input_dim"] == 1024
    assert any("mm_feat_folder dropped" in n for n in notes)


def test_omitted_keys_take_the_original_defaults():
    raw = raw_of(TSL_TRAIN)
    for sec in ("model", "opt", "loader", "train_cfg", "test_cfg"):
        del raw[sec]
    raw["model"] = {"fpn_dim": 512}
    cfg, notes = convert(raw)
    tc, model = cfg["test_cfg"]["nms"], cfg["model"]
    assert (tc["min_score"], tc["max_seg_num"], tc["sigma"]) == (0.01, 1000, 0.5)
    assert cfg["train_cfg"]["init_loss_norm"] == 2000 and cfg["opt"]["clip_grad_l2norm"] == -1
    assert (cfg["opt"]["weight_decay"], cfg["opt"]["epochs"]) == (0.0, 30)
    assert (cfg["loader"]["batch_size"], cfg["loader"]["num_workers"]) == (8, 4)
    assert model["max_buffer_len_factor"] == 6.0 and model["use_abs_pe"] is False
    assert model["n_mha_win_size"] == [-1] * 6 and model["n_head"] == 4 and model["embd_dim"] == 512
    assert any("original's defaults" in n and "init_loss_norm 2000" in n for n in notes)


def test_devices_are_dropped_and_scale_lr_like_the_original():
    raw = raw_of(TAL_UMT)
    raw["devices"] = ["cuda:0", "cuda:1"]
    raw["init_rand_seed"] = 7
    cfg, notes = convert(raw)
    assert cfg["opt"]["learning_rate"] == pytest.approx(0.002) and cfg["loader"]["num_workers"] == 8
    assert cfg["seed"] == 7 and any("devices" in n and "--device" in n for n in notes)


def test_unused_keys_are_dropped_with_a_note():
    raw = raw_of(TSL_TRAIN)
    raw["dataset"]["downsample_rate"] = 2                     # unused with force_upsampling
    raw["test_cfg"].update(iou_threshold=0.3, voting_thresh=0.9)
    cfg, notes = convert(raw)
    text = "\n".join(notes)
    for key in ("downsample_rate", "iou_threshold", "voting_thresh"):
        assert f"{key} dropped" in text
    raw["test_cfg"].update(nms_method="hard", multiclass_nms=False)
    cfg, _ = convert(raw)
    assert (cfg["test_cfg"]["nms"]["method"], cfg["test_cfg"]["nms"]["iou_threshold"]) == ("hard", 0.3)
    assert cfg["test_cfg"]["nms"]["voting_thresh"] == 0.9


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("section,key,near", [
    ("dataset", "json_fil", "dataset.json_file"), ("", "init_rand_sed", "init_rand_seed"),
    ("test_cfg", "nms_sigm", "test_cfg.nms_sigma")])
def test_typo_key_is_an_error_naming_it(section, key, near):
    raw = raw_of(TAL_EGO)
    (raw[section] if section else raw)[key] = 1
    msg = error_of(raw)
    assert f"'{section + '.' if section else ''}{key}'" in msg and near in msg and "old.yaml" in msg


@pytest.mark.parametrize("path,dotted,value", [
    (TAL_EGO, "model.backbone_type", "convTransformerMM2"),
    (TSL_TRAIN, "dataset.input_modality", "text"),
    (TAL_EGO, "dataset.input_modality", "audio"),
    (TSL_TRAIN, "test_cfg.nms_method", "none"),
    (TSL_TRAIN, "dataset_name", "thumos"),
    (TSL_TRAIN, "dataset.file_ext", ".h5"),
    (TAL_UMT, "dataset.feat_stride_list", [2, 2]),
    (TAL_UMT, "dataset.default_fps", None),
    (TAL_UMT, "model.fused_embd", None),
    (TSL_TRAIN, "model.fused_embd", 512)])
def test_unsupported_value_is_an_error_naming_the_key(path, dotted, value):
    raw = raw_of(path)
    *head, last = dotted.split(".")
    node = raw
    for part in head:
        node = node[part]
    node[last] = value
    msg = error_of(raw)
    assert f"'{dotted}'" in msg and "old.yaml" in msg


def test_downsampling_without_upsampling_is_unsupported():
    raw = copy.deepcopy(raw_of(TSL_TRAIN))
    raw["dataset"].update(downsample_rate=2, force_upsampling=False)
    assert "'dataset.downsample_rate'" in error_of(raw)


# ----------------------------------------------------------------------------- tools/convert_config.py

def test_tool_round_trip(tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / "new.yaml"
    assert tool.main([str(TAL_EGO), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Converted from") and "#  - " in text
    assert load_config(out) == load_config(TAL_EGO)
    with pytest.raises(UserError, match="--overwrite"):
        tool.main([str(TSL_TRAIN), "-o", str(out)])
    assert tool.main([str(TSL_TRAIN), "-o", str(out), "--overwrite", "--opt", "opt.epochs=3"]) == 0
    cfg = load_config(out).to_dict()
    assert cfg["task"] == "sound_localisation" and cfg["opt"]["epochs"] == 3
    capsys.readouterr()
    assert tool.main([str(TSL_TEST)]) == 0                   # stdout
    assert yaml.safe_load(capsys.readouterr().out)["dataset"]["val_split"] == ["test"]


def test_tool_refuses_new_style_config(tmp_path):
    with pytest.raises(UserError, match="need no conversion"):
        load_tool().main([str(REPO / "configs" / "demo_tsl_train.yaml")])


def test_tool_bad_input_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    raw = raw_of(TSL_TRAIN)
    raw["model"]["backbone_typ"] = "convTransformer"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    res = subprocess.run([sys.executable, str(TOOL), str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.backbone_typ" in lines[0]
