"""Bad inputs end a real ``python train.py`` process with one line `error: ...` naming the file,
key or video, exit status 2 and no traceback (docs/differences.md s.5.5). Each case breaks one
thing in a tiny valid dataset. These few run the script as a subprocess (the real stderr and
exit path); the full battery of malformed inputs runs in-process in tests/cli/test_bad_inputs_*.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from datagen import write_tiny_config, write_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]


def _annotations(data) -> dict:
    return json.loads(Path(data["annotation_file"]).read_text())


def _write_annotations(data, ann) -> None:
    Path(data["annotation_file"]).write_text(json.dumps(ann))


def _first(data, split="train") -> str:
    return data["video_ids"][split][0]


def corrupt_feature(data):
    vid = _first(data)
    Path(data["paths"]["audio"], f"{vid}.npy").write_bytes(b"not a numpy file")
    return vid


def label_out_of_range(data):
    ann = _annotations(data)
    vid = _first(data)
    ann[vid]["sound_localisation"][0]["label_id"] = 99
    _write_annotations(data, ann)
    return vid


def empty_annotation_file(data):
    Path(data["annotation_file"]).write_text("")
    return Path(data["annotation_file"]).name


CASES = [corrupt_feature, label_out_of_range, empty_annotation_file]   # the others: the battery


def _run_train(cfg_path):
    return subprocess.run([sys.executable, "train.py", str(cfg_path), "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__ for c in CASES])
def test_bad_data_is_one_line_error_naming_it(tmp_path, breaker):
    data = write_tiny_dataset(str(tmp_path / "d"), num_classes=3)
    cfg = write_tiny_config(str(tmp_path / "cfg.yaml"), data,
                            overrides={"output_folder": str(tmp_path / "ckpt")})
    needle = breaker(data)
    _assert_one_line_error(_run_train(cfg), needle)
    assert not (tmp_path / "ckpt").exists()     # nothing written for a run that cannot start


@pytest.mark.parametrize("key,value,needle", [
    ("opt", {"learning_rat": 0.1}, "did you mean 'opt.learning_rate'?"),
])
def test_bad_config_is_one_line_error_naming_the_key(tmp_path, key, value, needle):
    data = write_tiny_dataset(str(tmp_path / "d"), num_classes=3)
    cfg_path = write_tiny_config(str(tmp_path / "cfg.yaml"), data)
    cfg = yaml.safe_load(Path(cfg_path).read_text())
    cfg.setdefault(key, {}).update(value)
    Path(cfg_path).write_text(yaml.safe_dump(cfg))
    line = _assert_one_line_error(_run_train(cfg_path), needle)
    assert "cfg.yaml" in line
