"""The EMA trap of original configs (issue 16), scaled down: an original-layout TSL config trained
briefly from scratch on demo data. With the original's fixed decay the EMA weights are still
mostly the initial ones, and validation / eval.py say so in one warning line; with the decay
warm-up (now on for original configs too) the EMA scores like the raw weights."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

import eval as eval_cli
import train as train_cli
from libs.training.ema import ema_immaturity, initial_weight_share
from tools.make_demo_data import generate_demo_data

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_TSL = ROOT / "tests" / "data" / "original_configs" / "perception_tsl_multi_train.yaml"
EPOCHS = 8          # + 1 warm-up epoch, 6 iterations each: 54 updates, far below 1/(1 - 0.999)
MODEL = ["model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.n_head=2"]
TRAIN = MODEL + ["loader.batch_size=4", "loader.num_workers=0", "loader.eval_batch_size=8",
                 f"opt.epochs={EPOCHS}", "opt.warmup_epochs=1", "train.ckpt_freq=100"]
WARNING = "the EMA weights absorbed only"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema_trap")
    data = root / "data"
    generate_demo_data(data, seed=0, num_train=24, num_valid=12, num_test=0, min_duration=4.0,
                       max_duration=8.0)
    raw = yaml.safe_load(ORIGINAL_TSL.read_text())
    raw["dataset"].update(json_file=str(data / "annotations.json"),
                          feat_folder=str(data / "features" / "beats"),
                          mm_feat_folder=str(data / "features" / "umt"))
    raw["output_folder"] = str(root / "ckpt")
    config = root / "original_tsl.yaml"
    config.write_text(yaml.safe_dump(raw))
    return {"root": root, "config": config}


def train(original, name, *opts):
    argv = [str(original["config"]), "--output", name, "--device", "cpu", "--no-progress",
            "--threads", "1", "--opt", *TRAIN, *opts]
    assert train_cli.main(argv) == 0
    return original["root"] / "ckpt" / f"original_tsl_{name}"


def average_map(original, exp, *flags):
    out = exp / f"valid{'_'.join(flags)}.json"
    argv = [str(original["config"]), str(exp), "--split", "valid", "--device", "cpu",
            "--no-progress", "--threads", "1", "--out", str(out), *flags, "--opt", *MODEL,
            "loader.num_workers=0"]
    assert eval_cli.main(argv) == 0
    return json.loads(Path(str(out.with_suffix("")) + "_metrics.json").read_text())["average_map"]


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and WARNING in r.getMessage()]


def test_fixed_decay_is_flagged_and_warmup_ema_scores_like_raw(original, caplog):
    caplog.set_level(logging.INFO)
    fixed = train(original, "fixed", "train.ema_warmup=false", f"train.eval_freq={EPOCHS + 1}")
    # validation during training evaluated the EMA weights: one warning line, in train.log too
    assert len(warnings_of(caplog)) == 1
    assert WARNING in (fixed / "train.log").read_text()
    caplog.clear()
    trap, raw = average_map(original, fixed), average_map(original, fixed, "--no-ema")
    (msg,) = warnings_of(caplog)
    assert "54 updates at the fixed decay 0.999" in msg and "95%" in msg and "--no-ema" in msg
    assert str(fixed) in msg
    assert raw > 0.08 and trap < raw / 4           # the trap: EMA still ~95% initial weights

    caplog.clear()
    warm = train(original, "warm")                  # the default for original configs now
    ema, raw_w = average_map(original, warm), average_map(original, warm, "--no-ema")
    assert not warnings_of(caplog)
    assert raw_w > 0.08 and abs(ema - raw_w) < 0.03


def test_initial_weight_share():
    assert initial_weight_share(0, 0.999, True) == 1.0
    assert initial_weight_share(350, 0.999, False) == pytest.approx(0.999 ** 350, rel=1e-12)
    assert initial_weight_share(3, 0.999, True) == pytest.approx(2 / 11 * 3 / 12 * 4 / 13, rel=1e-12)
    # past the ramp the decay is the configured one: 9,001 ramp steps, then 0.999 per update
    ramp = 1.0
    for n in range(1, 9001):
        ramp *= min(0.999, (1 + n) / (10 + n))
    assert initial_weight_share(9100, 0.999, True) == pytest.approx(ramp * 0.999 ** 100, rel=1e-9)
    # the threshold: a fixed decay d is flagged below ~1/(1 - d) updates
    assert ema_immaturity({"num_updates": 990, "decay": 0.999, "warmup": False})
    assert ema_immaturity({"num_updates": 1000, "decay": 0.999, "warmup": False}) is None
    assert ema_immaturity({"num_updates": 1, "decay": 0.999, "warmup": True}) is None
    assert "0 updates" in ema_immaturity({"num_updates": 0, "decay": 0.999, "warmup": True})
