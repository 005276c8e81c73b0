"""Model EMA, checkpoint files and folders, RNG state, distributed and logging helpers."""
from __future__ import annotations

import logging
import os
import random
import socket

import numpy as np
import pytest
import torch
from torch import nn

from libs.common.errors import UserError
from libs.common import distributed as du
from libs.common.io import _umask
from libs.common.checkpoints import find_checkpoint, load_checkpoint, save_checkpoint
from libs.training.run_dir import check_fresh_folder, claim_run_dir, experiment_dir
from libs.training.ema import ModelEma
from libs.common.logs import setup_logging
from libs.training.tensorboard import TensorboardWriter
from libs.common.seed import fix_random_seed, get_rng_state, set_rng_state


class Scalar(nn.Module):
    def __init__(self, v: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(v, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """fix_random_seed changes process-wide switches; keep other test files unaffected."""
    for var in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.setenv(var, os.environ.get(var, ""))
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


# ---------------------------------------------------------------- EMA

def test_ema_warmup_exact_values():
    model = Scalar(1.0)
    ema = ModelEma(model, decay=0.999, warmup=True)
    assert not ema.module.training and not ema.module.w.requires_grad
    expected = 1.0
    for n in range(1, 6):
        with torch.no_grad():
            model.w.fill_(float(10 * n))
            model.count.fill_(n)
        ema.update(model)
        d = min(0.999, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * 10 * n
        assert ema.module.w.item() == pytest.approx(expected, rel=1e-14)
        assert ema.module.count.item() == n  # integer buffers are copied
    assert ema.num_updates == 5
    # first update: d = 2/11
    first = ModelEma(Scalar(1.0), decay=0.999, warmup=True)
    first.update(Scalar(0.0))
    assert first.module.w.item() == pytest.approx(2 / 11)


def test_ema_fixed_decay_and_wrapped_model():
    model = Scalar(1.0)
    ema = ModelEma(nn.DataParallel(model), decay=0.999, warmup=False)
    with torch.no_grad():
        model.w.zero_()
    for _ in range(50):
        ema.update(nn.DataParallel(model))
    assert ema.module.w.item() == pytest.approx(0.999 ** 50, rel=1e-12)
    assert 0.95 < ema.module.w.item() < 0.952
    assert model.w.item() == 0.0  # the model itself is untouched


def test_ema_state_dict_round_trip():
    model = Scalar(3.0)
    ema = ModelEma(model, decay=0.999, warmup=True)
    for _ in range(3):
        ema.update(Scalar(1.0))
    state = ema.state_dict()
    assert state == {"num_updates": 3, "decay": 0.999, "warmup": True}   # weights: ema.module
    other = ModelEma(Scalar(0.0), decay=0.5, warmup=False)
    other.load_state_dict(state)
    other.module.load_state_dict(ema.module.state_dict())
    assert other.num_updates == 3 and other.module.w.item() == ema.module.w.item()
    assert (other.decay, other.warmup) == (0.5, False)    # the config wins


# ---------------------------------------------------------------- checkpoints

def test_save_load_atomic(tmp_path, caplog):
    path = tmp_path / "epoch_001.pth.tar"
    save_checkpoint({"epoch": 1, "w": torch.arange(3)}, path)
    out = load_checkpoint(path)
    assert out["epoch"] == 1 and torch.equal(out["w"], torch.arange(3))
    with caplog.at_level(logging.INFO, logger="libs.common.checkpoints"):
        save_checkpoint({"epoch": 2}, path)
    assert "replaced" in caplog.text
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001.pth.tar"]  # no temp files left
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint({"x": Boom()}, path)
    assert load_checkpoint(path)["epoch"] == 2  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001.pth.tar"]


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth.tar"
    with pytest.raises(UserError, match="nope.pth.tar"):
        load_checkpoint(missing)
    for name, data in (("junk.pth.tar", b"not a checkpoint"), ("tiny.pth.tar", b"junk"),
                       ("empty.pth.tar", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=name):
            load_checkpoint(tmp_path / name)
    torch.save({"obj": Scalar()}, tmp_path / "obj.pth.tar")  # pickled module: refused
    with pytest.raises(UserError, match="obj.pth.tar"):
        load_checkpoint(tmp_path / "obj.pth.tar")
    torch.save([1, 2], tmp_path / "list.pth.tar")
    with pytest.raises(UserError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pth.tar")


def test_find_checkpoint_rules(tmp_path):
    with pytest.raises(UserError, match="no checkpoints"):
        find_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not found"):
        find_checkpoint(tmp_path / "missing")
    for name in ("epoch_009.pth.tar", "epoch_010.pth.tar", "epoch_2.pth.tar", "epoch_x.pth.tar",
                 "best.pth.tar"):
        (tmp_path / name).write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "epoch_010.pth.tar"
    assert find_checkpoint(tmp_path, 2).name == "epoch_2.pth.tar"
    assert find_checkpoint(tmp_path, 9).name == "epoch_009.pth.tar"
    assert find_checkpoint(str(tmp_path / "best.pth.tar")).name == "best.pth.tar"
    with pytest.raises(UserError, match="available epochs: 2, 9, 10"):
        find_checkpoint(tmp_path, 5)
    (tmp_path / "epoch_100.pth.tar").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "epoch_100.pth.tar"


def test_experiment_dir_and_claim(tmp_path):
    d = experiment_dir(tmp_path, "configs/demo_tsl_train.yaml", None)
    assert d.parent == tmp_path and d.name.startswith("demo_tsl_train_")
    assert " " not in d.name and ":" not in d.name and len(d.name) == len("demo_tsl_train_") + 15
    named = experiment_dir(tmp_path, "configs/a.yaml", "run 1:x")
    assert named == tmp_path / "a_run_1_x"
    assert not named.exists()
    with claim_run_dir(named) as claimed:
        assert claimed.path == named and named.is_dir()
    with claim_run_dir(named):   # an empty folder may be reused
        pass
    (named / "epoch_005.pth.tar").write_bytes(b"x")
    with pytest.raises(UserError, match="--output"):
        check_fresh_folder(named)
    nested = tmp_path / "x" / "y"
    with claim_run_dir(nested):
        assert nested.is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile"):
        claim_run_dir(tmp_path / "afile")
    with pytest.raises(UserError, match="Not a directory"):
        claim_run_dir(tmp_path / "afile" / "run")


# ---------------------------------------------------------------- RNG

def _draws():
    return random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_rng_state_round_trip(tmp_path):
    fix_random_seed(7)
    a = _draws()
    fix_random_seed(7)
    assert _draws() == a
    np.random.randn()  # leaves a cached gauss in numpy's state
    state = get_rng_state()
    save_checkpoint({"rng": state}, tmp_path / "s.pth.tar")
    after = _draws()
    _draws()
    set_rng_state(load_checkpoint(tmp_path / "s.pth.tar")["rng"])  # weights_only load
    assert _draws() == after
    assert os.environ["PYTHONHASHSEED"] == "7"


# ---------------------------------------------------------------- distributed / logging

def test_distributed_single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = du.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device.type) == (0, 1, 0, "cpu")
    t = torch.tensor([1.0, 2.0])
    assert du.all_reduce_sum(t) is t and du.all_reduce_sum(3.0) == 3.0   # no process group
    du.cleanup()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    du.init_distributed("cpu")
    s = du.all_reduce_sum(torch.tensor([float(rank + 1)]))
    n = du.all_reduce_sum(float(rank))
    torch.save({"sum": s.item(), "mean": n.item() / world}, f"{out}.{rank}")
    du.cleanup()


@pytest.mark.skipif(os.environ.get("SKIP_DIST_TESTS") == "1", reason="SKIP_DIST_TESTS=1")
def test_distributed_two_process_gloo(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "r")
    torch.multiprocessing.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(f"{out}.{rank}") == {"sum": 3.0, "mean": 0.5}


def test_setup_logging_idempotent_and_ranks(tmp_path):
    root = logging.getLogger()
    setup_logging(None, rank=1)  # earlier tests may have left our handlers installed
    before = len(root.handlers) - 1
    setup_logging(tmp_path / "logs" / "train.log")
    setup_logging(tmp_path / "logs" / "train.log")
    assert len(root.handlers) == before + 2
    logging.getLogger("libs.test").info("hello")
    text = (tmp_path / "logs" / "train.log").read_text()
    assert text.count("INFO hello") == 1
    setup_logging(None, rank=1)
    assert len(root.handlers) == before + 1 and root.level == logging.WARNING
    setup_logging(None)  # leave INFO console logging behind


def test_tensorboard_writer(tmp_path):
    off = TensorboardWriter(tmp_path / "rank1", rank=1)
    off.add_scalar("x", 1.0, 0)
    off.close()
    assert not off.enabled and not (tmp_path / "rank1").exists()
    tb = TensorboardWriter(tmp_path / "tb")
    assert tb.enabled
    tb.add_scalar("train/lr", 0.1, 1)
    tb.close()
    assert tb.enabled is False  # closed
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))
