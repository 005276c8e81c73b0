"""Gradient accumulation (``train.accum_steps``), mixed precision (``train.amp``, ``eval.py
--amp``) and the ``train.compile`` wrapper, on CPU with a tiny model."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import eval as eval_cli
import train as train_cli
from libs.common.distributed import unwrap_model
from libs.common.errors import UserError
from libs.config.loader import load_config
from libs.datasets import PerceptionDataset, make_loader, set_loader_epoch
from libs.evaluation.predict import predict_dataset
from libs.modeling import Detector
from libs.modeling.losses import LossNormalizer
from libs.common.seed import fix_random_seed
from libs.training.checkpointing import TrainState
from libs.training.loop import make_grad_scaler, prepare_model, train_one_epoch
from tools.make_demo_data import generate_demo_data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "demo_tsl_train.yaml")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum")
    generate_demo_data(root / "data", seed=2, num_train=16, num_valid=2, num_test=0,
                       min_duration=4.0, max_duration=6.0)
    return root


def _opts(root: Path, **extra) -> list:
    d = root / "data"
    opts = {"dataset.annotation_file": d / "annotations.json",
            "dataset.modalities.0.path": d / "features" / "beats",
            "dataset.modalities.1.path": d / "features" / "umt", "output_folder": root / "ckpt",
            "model.embd_dim": 16, "model.n_head": 2, "model.droppath": 0.0, "model.dropout": 0.0,
            "loader.batch_size": 16, "loader.eval_batch_size": 2, "loader.num_workers": 0,
            "opt.epochs": 2, "opt.warmup_epochs": 1, "train.ckpt_freq": 1, "train.eval_freq": 0}
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def _train(root: Path, name: str, **opts) -> dict:
    argv = [CONFIG, "--output", name, "--device", "cpu", "--no-progress", "--threads", "1",
            "--opt", *_opts(root, **opts)]
    assert train_cli.main(argv) == 0
    exp = root / "ckpt" / f"demo_tsl_train_{name}"
    last = sorted(exp.glob("epoch_*.pth.tar"))[-1]
    return torch.load(last, map_location="cpu", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ---------------------------------------------------------------- accumulation

def test_batch_4_times_4_micro_batches_reproduces_batch_16(data16):
    # SGD at a large learning rate so that the weights move far (AdamW divides tiny gradients by
    # sqrt(v) + 1e-8 and turns fp32 summation-order noise of ~1e-9 into ~1e-5 weight noise)
    sgd = {"opt.type": "SGD", "opt.learning_rate": 0.1}
    big = _train(data16, "b16", **sgd)
    acc = _train(data16, "b4k4", **sgd, **{"loader.batch_size": 4, "train.accum_steps": 4})
    # 16 videos: one optimizer step per epoch, 3 epochs (1 warm-up) in both runs
    assert big["global_step"] == acc["global_step"] == 3
    assert big["scheduler"]["last_epoch"] == acc["scheduler"]["last_epoch"] == 3
    assert big["ema"]["num_updates"] == acc["ema"]["num_updates"] == 3
    assert acc["loss_normalizer"]["value"] == pytest.approx(big["loss_normalizer"]["value"],
                                                            rel=1e-12)
    assert _max_diff(big["state_dict"], acc["state_dict"]) < 1e-5
    assert _max_diff(big["state_dict_ema"], acc["state_dict_ema"]) < 1e-5
    fix_random_seed(load_config(CONFIG, _opts(data16)).seed)
    init = Detector.from_config(load_config(CONFIG, _opts(data16))).state_dict()
    assert _max_diff(init, big["state_dict"]) > 1e-2              # the comparison is not vacuous


def test_accumulation_errors(data16):
    # 16 videos at batch 16 make one micro-batch per epoch: too few for two per step
    with pytest.raises(UserError, match="train.accum_steps 2"):
        train_cli.main([CONFIG, "--output", "few", "--device", "cpu", "--opt",
                        *_opts(data16, **{"train.accum_steps": 2})])
    with pytest.raises(UserError, match="train.accum_steps.*train_cfg.loss_weight"):
        load_config(CONFIG, _opts(data16, **{"train.accum_steps": 2,
                                             "train_cfg.loss_weight": -1}))
    assert not (data16 / "ckpt" / "demo_tsl_train_few").exists()


# ---------------------------------------------------------------- mixed precision

def test_bf16_training_on_cpu_keeps_fp32_weights_close_to_fp32_training(data16):
    kw = {"loader.batch_size": 4, "opt.epochs": 1, "opt.warmup_epochs": 0}
    fp32 = _train(data16, "fp32", **kw)
    bf16 = _train(data16, "bf16", **kw, **{"train.amp": "bf16"})
    assert all(v.dtype == torch.float32 for v in bf16["state_dict"].values()
               if v.is_floating_point())
    diff = _max_diff(fp32["state_dict"], bf16["state_dict"])
    assert 0 < diff < 5e-3     # autocast changed the arithmetic, not the training (4 AdamW steps)
    assert bf16["config"]["train"]["amp"] == "bf16"


def _tiny_setup(root: Path, amp: str, **extra):
    cfg = load_config(CONFIG, _opts(root, **{"loader.batch_size": 4, "train.amp": amp, **extra}))
    fix_random_seed(cfg.seed)
    model = Detector.from_config(cfg)
    train_set = PerceptionDataset.from_config(cfg, cfg.dataset.train_split, is_training=True)
    loader = make_loader(train_set, batch_size=4, num_workers=0, is_training=True, seed=cfg.seed,
                         max_seq_len=cfg.dataset.max_seq_len, max_div_factor=model.max_div_factor)
    return cfg, model, loader


class _NoSchedule:
    def step(self) -> None:
        pass


class _GradRecorder(torch.optim.SGD):
    """SGD at lr 0 that keeps the gradients it is stepped with."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append(torch.cat([p.grad.flatten() for g in self.param_groups
                                    for p in g["params"] if p.grad is not None]))


def test_fp16_grad_scaler_unscales_before_clipping(data16):
    """The fp16 path (GradScaler) run on CPU as a stand-in for CUDA: the optimizer sees the
    unscaled, clipped gradients of fp32 training (to fp16 rounding); clipping the *scaled*
    gradients would hand it gradients ~256x too small."""
    seen = {}
    for amp in ("none", "fp16"):
        cfg, model, loader = _tiny_setup(data16, amp)
        opt = _GradRecorder(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0, enabled=amp == "fp16")
        set_loader_epoch(loader, 0)
        train_one_epoch(model, loader, opt, _NoSchedule(), None, LossNormalizer(250.0, 0.9), cfg,
                        TrainState(), CPU, scaler=scaler, show_progress=False)
        seen[amp] = opt.seen
        if amp == "fp16":
            assert scaler.get_scale() == 256.0          # no step skipped for inf gradients
    assert len(seen["none"]) == len(seen["fp16"]) == 4
    for g32, g16 in zip(seen["none"], seen["fp16"]):
        assert g32.norm() > 0.1
        assert 0.9 < (g16.norm() / g32.norm()).item() < 1.1          # unscaled: same size
        assert ((g16 - g32).norm() / g32.norm()).item() < 0.2        # fp16 forward: ~9% here
    assert make_grad_scaler("fp16", CPU).is_enabled() and not make_grad_scaler("bf16", CPU).is_enabled()


def test_amp_errors_on_cpu(data16):
    with pytest.raises(UserError, match="fp16.*CUDA"):
        train_cli.main([CONFIG, "--output", "fp16", "--device", "cpu", "--opt",
                        *_opts(data16, **{"train.amp": "fp16"})])
    assert not (data16 / "ckpt" / "demo_tsl_train_fp16").exists()
    with pytest.raises(UserError, match="--amp"):
        eval_cli.main([CONFIG, str(data16 / "no_run"), "--amp", "fp16", "--device", "cpu"])


def test_bf16_inference_decodes_in_fp32(data16):
    cfg, model, _ = _tiny_setup(data16, "none")
    val = PerceptionDataset.from_config(cfg, cfg.dataset.val_split, is_training=False)
    raw = {}

    def hook(video_id, cand, grid):
        raw.setdefault(video_id, []).append(cand["scores"])

    fp32 = predict_dataset(model, val, cfg, CPU, amp="none")
    bf16 = predict_dataset(model, val, cfg, CPU, amp="bf16", raw_hook=hook)
    scores = torch.cat([s for v in raw.values() for s in v])
    assert scores.dtype == torch.float32 and scores.numel() > 100
    # sigmoid in fp32 of bf16 logits: most scores are not bf16 numbers (decoded in bf16 they
    # would all be)
    assert (scores.to(torch.bfloat16).float() == scores).float().mean() < 0.5
    for a, b in zip(fp32, bf16):
        assert a["video_id"] == b["video_id"]
        assert abs(a["scores"][0].item() - b["scores"][0].item()) < 0.02   # top score per video


# ---------------------------------------------------------------- torch.compile wrapper

def test_compiled_model_unwraps_to_the_plain_module(data16):
    cfg, model, _ = _tiny_setup(data16, "none", **{"train.compile": True})
    wrapped = prepare_model(model, cfg, CPU)        # compiles lazily: nothing is traced here
    assert wrapped is not model and unwrap_model(wrapped) is model
    assert list(unwrap_model(wrapped).state_dict()) == list(model.state_dict())
    plain = prepare_model(model, dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, compile=False)), CPU)
    assert plain is model
