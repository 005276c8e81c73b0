"""``--resume`` checks everything before it acts: required keys, weights against the model,
optimizer groups, a changed config (``--resume-override``), older epochs into a newer folder,
``--resume auto`` / ``--resume RUN_DIR``. Every refusal is one ``error:`` line (exit 2) and leaves
the run folder byte for byte as it was."""
from __future__ import annotations

import hashlib
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

import train as train_cli
from libs.common.errors import run_cli
from train_helpers import assert_same_training_state, load, train_argv

RUN = "demo_tsl_train_run"


@pytest.fixture(scope="module")
def finished(tiny_demo, tmp_path_factory):
    """A finished 3-epoch run (1 warmup + 2): epoch_001..003, 2 iterations per epoch."""
    root = tmp_path_factory.mktemp("resume_src")
    assert train_cli.main(train_argv(tiny_demo, root, "run", **{"opt.epochs": 2})) == 0
    return root


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run: (output root, run folder)."""
    shutil.copytree(finished / RUN, tmp_path / RUN)
    return tmp_path, tmp_path / RUN


def tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv, *needles) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(train_cli.main, argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def resume_argv(demo, root, ckpt, *more, **opts):
    return train_argv(demo, root, "run", "--resume", str(ckpt), *more, **{"opt.epochs": 2, **opts})


def test_checkpoint_without_rng_state_or_with_broken_parts_is_refused(tiny_demo, run, capsys):
    root, folder = run
    ckpt = load(folder / "epoch_002.pth.tar")
    for name, broken, needle in [
            ("no_rng.pth.tar", {k: v for k, v in ckpt.items() if k != "rng_state"}, "no 'rng_state'"),
            ("no_numpy.pth.tar", {**ckpt, "rng_state": {"python": 1, "torch": torch.zeros(3)}},
             "'rng_state' has no 'numpy'"),
            ("bad_epoch.pth.tar", {**ckpt, "epoch": -3}, "'epoch' is -3"),
            ("opt_list.pth.tar", {**ckpt, "optimizer": [1, 2]}, "'optimizer' is a list")]:
        torch.save(broken, folder / name)
        before = tree_hash(folder)
        refused(capsys, resume_argv(tiny_demo, root, folder / name), name, needle)
        assert tree_hash(folder) == before


def test_different_width_is_refused_before_config_yaml_is_touched(tiny_demo, run, capsys):
    root, folder = run
    before = tree_hash(folder)
    refused(capsys, resume_argv(tiny_demo, root, folder / "epoch_002.pth.tar",
                                **{"model.embd_dim": 32}), "model.embd_dim: 16 vs 32")
    assert tree_hash(folder) == before


def test_weights_and_optimizer_that_do_not_fit_are_named(tiny_demo, run, capsys):
    root, folder = run
    ckpt = load(folder / "epoch_002.pth.tar")
    key = next(k for k, v in ckpt["state_dict"].items() if v.dim() == 3)
    sd = dict(ckpt["state_dict"])
    sd[key] = sd[key][:, :-1]
    torch.save({**ckpt, "state_dict": sd}, folder / "shape.pth.tar")
    opt = {**ckpt["optimizer"], "param_groups": ckpt["optimizer"]["param_groups"][:1]}
    torch.save({**ckpt, "optimizer": opt}, folder / "groups.pth.tar")
    before = tree_hash(folder)
    refused(capsys, resume_argv(tiny_demo, root, folder / "shape.pth.tar"), f"state_dict.{key}: shape")
    refused(capsys, resume_argv(tiny_demo, root, folder / "groups.pth.tar"),
            "optimizer: 1 parameter groups vs 2")
    assert tree_hash(folder) == before


def test_changed_config_is_refused_naming_the_keys(tiny_demo, run, capsys):
    root, folder = run
    before = tree_hash(folder)
    line = refused(capsys, resume_argv(tiny_demo, root, folder / "epoch_003.pth.tar",
                                       **{"opt.learning_rate": 0.01, "train_cfg.loss_weight": 2.0}),
                   "opt.learning_rate: 0.001 vs 0.01", "train_cfg.loss_weight: 1.0 vs 2.0")
    assert "for others start a new run" in line          # loss_weight is not overridable
    line = refused(capsys, resume_argv(tiny_demo, root, folder / "epoch_003.pth.tar",
                                       **{"opt.epochs": 4}), "opt.epochs: 2 vs 4")
    assert "--resume-override opt.epochs" in line
    refused(capsys, resume_argv(tiny_demo, root, folder / "epoch_003.pth.tar", "--resume-override",
                                "model.embd_dim"), "--resume-override model.embd_dim",
            "cannot change on resume")
    assert tree_hash(folder) == before


def test_older_epoch_into_a_folder_with_newer_checkpoints_is_refused(tiny_demo, run, capsys):
    root, folder = run
    before = tree_hash(folder)
    refused(capsys, resume_argv(tiny_demo, root, folder / "epoch_001.pth.tar"), "epoch 1",
            "epoch_003.pth.tar (epoch 3)", "epoch_002.pth.tar (epoch 2)", "--output NAME")
    assert tree_hash(folder) == before
    # branching into a new folder is the explicit way
    argv = resume_argv(tiny_demo, root, folder / "epoch_001.pth.tar")
    argv[argv.index("--output") + 1] = "branch"
    assert train_cli.main(argv) == 0
    assert tree_hash(folder) == before
    branch = root / "demo_tsl_train_branch"
    assert sorted(p.name for p in branch.glob("epoch_*")) == ["epoch_002.pth.tar", "epoch_003.pth.tar"]
    assert_same_training_state(load(branch / "epoch_003.pth.tar"), load(folder / "epoch_003.pth.tar"))


def test_finished_run_resumed_unchanged_is_a_no_op(tiny_demo, run, caplog):
    root, folder = run
    before = tree_hash(folder)
    caplog.set_level(logging.INFO)
    assert train_cli.main(resume_argv(tiny_demo, root, "auto")) == 0
    assert "nothing to train" in caplog.text and "epoch_003.pth.tar" in caplog.text
    assert tree_hash(folder) == before


def test_extending_a_finished_run_rebuilds_the_schedule_and_says_how(tiny_demo, run, caplog):
    root, folder = run
    caplog.set_level(logging.INFO)
    argv = resume_argv(tiny_demo, root, folder / "epoch_003.pth.tar", "--resume-override",
                       "opt.epochs", **{"opt.epochs": 4})
    assert train_cli.main(argv) == 0
    assert "learning-rate schedule rebuilt" in caplog.text and "continued at step 6" in caplog.text
    assert "5 epochs in all" in caplog.text
    ckpt = load(folder / "epoch_005.pth.tar")
    assert ckpt["global_step"] == 10 and ckpt["config"]["opt"]["epochs"] == 4
    # cosine over steps 2..10 (warmup 2 steps) of the new schedule: after 10 steps, eta_min; the
    # step after the resume (step 7) ran at the new schedule's lr, far above the old run's 1e-8
    sched = ckpt["scheduler"]
    assert sched["max_steps"] == 10 and sched["last_epoch"] == 10
    w, m, base, eta = 2, 10, 1e-3, 1e-8
    lr6 = eta + 0.5 * (base - eta) * (1 + math.cos(math.pi * (6 - w) / (m - w)))
    assert f"lr 1.000e-08 -> {lr6:.3e}" in caplog.text
    assert (folder / "config.yaml").read_text().count("epochs: 4") == 1


def test_resume_auto_and_run_dir_pick_the_newest_loadable_checkpoint(tiny_demo, tmp_path, caplog,
                                                                     capsys):
    caplog.set_level(logging.INFO)
    # auto with nothing to resume: a new run in the --output folder
    argv = train_argv(tiny_demo, tmp_path, "auto", "--resume", "auto",
                      **{"opt.epochs": 2, "opt.early_stop_epochs": 2})
    assert train_cli.main(argv) == 0
    folder = tmp_path / "demo_tsl_train_auto"
    assert "no checkpoint in" in caplog.text and (folder / "epoch_002.pth.tar").exists()
    (folder / "epoch_002.pth.tar").write_bytes(b"truncated by a broken disk")
    caplog.clear()
    argv = train_argv(tiny_demo, tmp_path, "auto", "--resume", str(folder), **{"opt.epochs": 2})
    assert train_cli.main(argv) == 0
    assert "skipped epoch_002.pth.tar: cannot read checkpoint" in caplog.text
    assert f"continuing from {folder / 'epoch_001.pth.tar'} (epoch 1)" in caplog.text
    assert load(folder / "epoch_002.pth.tar")["epoch"] == 2       # rewritten by the resumed run
    assert load(folder / "epoch_003.pth.tar")["epoch"] == 3
    argv = train_argv(tiny_demo, tmp_path, "x", "--resume", "auto")
    i = argv.index("--output")
    refused(capsys, argv[:i] + argv[i + 2:], "--resume auto", "--output NAME")


def test_free_keys_change_silently_but_are_logged(tiny_demo, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert train_cli.main(train_argv(tiny_demo, tmp_path, "free",
                                     **{"opt.early_stop_epochs": 1})) == 0
    folder = tmp_path / "demo_tsl_train_free"
    argv = train_argv(tiny_demo, tmp_path, "free", "--resume", "auto",
                      **{"loader.num_workers": 1, "train.print_freq": 3})
    assert train_cli.main(argv) == 0
    assert "resume: loader.num_workers: 0 vs 1 (cannot change the weights" in caplog.text
    assert "opt.early_stop_epochs: 1 vs null" in caplog.text
    assert load(folder / "epoch_002.pth.tar")["epoch"] == 2
