"""Shared parts of the bad-input battery (tests/cli/test_bad_inputs_*.py).

A session-wide base workspace holds a tiny dataset (tests/datagen.py), its config, a trained run
folder (``ckpt/cfg_run/epoch_001.pth.tar``) and eval outputs (``out/valid.json``,
``out/valid_metrics.json``, ``out/test.json``). Each case copies it, breaks one input, hashes
every file, runs a CLI in-process through ``run_cli`` (what ``python X.py`` does) and checks: exit
status 2, exactly one ``error:`` line on stderr naming the culprit, no traceback, and every file
of the workspace unchanged (no output written, none replaced).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import yaml

from datagen import write_tiny_config, write_tiny_dataset
from libs.common.errors import run_cli
from libs.common.logs import setup_logging

MODEL = {"model": {"embd_dim": 16, "n_head": 2}, "opt": {"epochs": 1, "warmup_epochs": 0},
         "train": {"ckpt_freq": 1}}


class Workspace:
    """Paths of one copy of the base workspace (``root``)."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root = root
        meta = json.loads((root / "meta.json").read_text())
        self.data = json.loads(json.dumps(meta["data"]).replace(str(base), str(root)))
        self.config = root / "cfg.yaml"
        self.run = root / "ckpt" / "cfg_run"
        self.ckpt = self.run / "epoch_001.pth.tar"
        self.out = root / "out"

    # ------------------------------------------------------------ inputs
    @property
    def ann_path(self) -> Path:
        return Path(self.data["annotation_file"])

    def annotations(self) -> Dict[str, Any]:
        return json.loads(self.ann_path.read_text())

    def write_annotations(self, ann: Any) -> None:
        self.ann_path.write_text(json.dumps(ann))

    def video(self, split: str = "train", i: int = 0) -> str:
        return self.data["video_ids"][split][i]

    def feature(self, modality: str, vid: str) -> Path:
        return Path(self.data["paths"][modality]) / f"{vid}.npy"

    def config_dict(self) -> Dict[str, Any]:
        return yaml.safe_load(self.config.read_text())

    def write_config(self, cfg: Any) -> None:
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # ------------------------------------------------------------ command lines
    def train_argv(self, *more: str) -> List[str]:
        return [str(self.config), "--output", "new", "--device", "cpu", "--no-progress",
                "--threads", "1", *more]

    def eval_argv(self, *more: str, ckpt: Any = None) -> List[str]:
        return [str(self.config), str(ckpt or self.run), "--device", "cpu", "--no-progress",
                "--threads", "1", *more]


def build_base(root: Path) -> Path:
    """Write the base workspace under ``root`` (once per session)."""
    import eval as eval_cli
    import train as train_cli
    data = write_tiny_dataset(str(root / "d"), num_classes=3)
    cfg = write_tiny_config(str(root / "cfg.yaml"), data,
                            overrides={"output_folder": str(root / "ckpt"), **MODEL})
    assert train_cli.main([cfg, "--output", "run", "--device", "cpu", "--no-progress",
                           "--threads", "1"]) == 0
    run = root / "ckpt" / "cfg_run"
    (root / "out").mkdir()
    common = ["--device", "cpu", "--no-progress", "--threads", "1"]
    assert eval_cli.main([cfg, str(run), "--split", "valid", "--out", str(root / "out" / "valid.json"),
                          *common]) == 0
    assert eval_cli.main([cfg, str(run), "--split", "test", "--saveonly", "--out",
                          str(root / "out" / "test.json"), *common]) == 0
    (root / "meta.json").write_text(json.dumps({"data": data}))
    return root


@pytest.fixture(scope="session")
def bad_inputs_base(tmp_path_factory) -> Path:
    return build_base(tmp_path_factory.mktemp("bad_inputs_base"))


@pytest.fixture
def ws(bad_inputs_base, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(bad_inputs_base, root)
    w = Workspace(root, bad_inputs_base)
    cfg = yaml.safe_load(w.config.read_text())      # point the config at this copy
    w.write_config(json.loads(json.dumps(cfg).replace(str(bad_inputs_base), str(root))))
    return w


def tree_hash(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_error(capsys, main: Callable, argv: List[str], needles: List[str],
                          root: Path) -> str:
    """Run ``main`` as its script does; exit 2, one ``error:`` line holding every needle, no
    traceback, no file under ``root`` added, removed or changed."""
    before = tree_hash(root)
    capsys.readouterr()
    setup_logging(None)   # log handlers of an earlier case hold that case's (closed) stderr
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    if os.environ.get("SHOW_BAD_INPUT_ERRORS"):
        print(f"\n[bad input] {lines[0]}", file=sys.__stdout__)
    after = tree_hash(root)
    assert after == before, {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return lines[0]
