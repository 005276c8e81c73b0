"""``--resume`` continues bit for bit: with DataLoader workers and stochastic depth on."""
from __future__ import annotations

import train as train_cli
from train_helpers import assert_same_training_state, load, train_argv


def test_resume_with_two_workers_and_droppath_is_bit_identical(tiny_demo, tmp_path):
    # 4 videos, batch 2: 2 iterations per epoch; model.droppath 0.1 (the default) draws
    # stochastic-depth masks from the global torch RNG in the main process
    kw = {"loader.num_workers": 2, "model.droppath": 0.1}
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "full", **kw)) == 0
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "part", **kw,
                                     **{"opt.early_stop_epochs": 1})) == 0
    part = tmp_path / "demo_tsl_train_part"
    assert not (part / "epoch_002.pth.tar").exists()
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "part", "--resume",
                                     str(part / "epoch_001.pth.tar"), **kw)) == 0
    a = load(tmp_path / "demo_tsl_train_full" / "epoch_002.pth.tar")
    b = load(part / "epoch_002.pth.tar")
    assert a["epoch"] == 2 and a["global_step"] == 4
    assert_same_training_state(a, b)
