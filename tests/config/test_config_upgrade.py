"""Configs stored in checkpoints by version 1 (flat NMS keys in test_cfg) load after an upgrade."""
import logging

import pytest

from libs.common.errors import UserError
from libs.config.loader import resolve_config
from libs.config.upgrade import upgrade_stored_config
from libs.modeling.detector import checkpoint_config

CURRENT = resolve_config({"dataset": {"annotation_file": "a.json", "modalities": [
    {"name": "audio", "path": "feats/a", "dim": 8}]}}, "x.yaml")


def _v1() -> dict:
    """The current config as version 1 stored it: flat NMS keys, the old derived section."""
    raw = CURRENT.to_dict()
    nms = raw["test_cfg"].pop("nms")
    raw["test_cfg"].update(nms_method="soft", nms_sigma=nms["sigma"], min_score=nms["min_score"],
                           max_seg_num=nms["max_seg_num"], multiclass_nms=nms["multiclass"],
                           voting_thresh=nms["voting_thresh"], nms_backend=nms["backend"],
                           iou_threshold=nms["iou_threshold"])
    raw["derived"] = {"input_dims": [8], "input_dim": 8}
    return raw


def test_version_1_checkpoint_config_is_upgraded(caplog):
    with pytest.raises(UserError, match="renamed, use test_cfg.nms.method"):
        resolve_config(_v1(), "old.pth.tar")          # not silently accepted as it is
    with caplog.at_level(logging.INFO):
        cfg = checkpoint_config({"config": _v1()}, "old.pth.tar")
    assert cfg == CURRENT and cfg.test_cfg.nms.method == "gaussian"
    assert "test_cfg.nms_method -> test_cfg.nms.method" in caplog.text


def test_current_config_is_left_alone():
    raw = CURRENT.to_dict()
    out, notes = upgrade_stored_config(raw)
    assert out is raw and notes == []
