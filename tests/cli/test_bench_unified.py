"""benchmarks/bench_unified.py: custom variants and the summary's paired differences."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_unified as bu  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_registry():
    custom, task_of = dict(bu.CUSTOM), dict(bu.TASK_OF)
    yield
    bu.CUSTOM.clear(), bu.CUSTOM.update(custom)
    bu.TASK_OF.clear(), bu.TASK_OF.update(task_of)


def test_custom_variant_on_a_separate_models_config():
    assert bu.add_custom("talb4@tal=loader.batch_size=4;seed=3") == "talb4"
    assert bu.variant_args("talb4", 0.3) == ("configs/demo_tal_train.yaml",
                                             ["loader.batch_size=4", "seed=3"])
    assert bu.TASK_OF["talb4"] == ("action_localisation",)
    assert bu.add_custom("q=model.proj_dims=[1024,1024,384,384]") == "q"
    assert bu.variant_args("q", 0.3) == ("configs/demo_unified_train.yaml",
                                         ["model.proj_dims=[1024,1024,384,384]"])
    assert "q" not in bu.TASK_OF
    with pytest.raises(SystemExit, match="NAME@tal or NAME@tsl"):
        bu.add_custom("x@talb4=seed=1")            # a custom variant is not a base
    with pytest.raises(SystemExit, match="NAME@tal or NAME@tsl"):
        bu.add_custom("x@unified=seed=1")


def _runs(values, task_keys):
    return [dict(seed=s, train_s=t, **dict(zip(task_keys, v))) for s, t, v in values]


def test_summary_pairs_by_seed_and_times_only_unified_variants():
    a, s = "action_localisation", "sound_localisation"
    results = {
        "tal": _runs([(1, 60.0, [0.70]), (2, 60.0, [0.60]), (3, 60.0, [0.80])], [a]),
        "tsl": _runs([(1, 40.0, [0.50]), (2, 40.0, [0.55]), (3, 40.0, [0.60])], [s]),
        # seeds in another order, one seed (4) without a separate run
        "uni": _runs([(3, 90.0, [0.78, 0.62]), (1, 110.0, [0.71, 0.53]), (2, 100.0, [0.63, 0.55]),
                      (4, 1.0, [0.0, 0.0])], [a, s]),
        "talb4": _runs([(1, 70.0, [0.72]), (2, 70.0, [0.64])], [a]),
    }
    text = bu.summary(results)
    # uni - tal: (+0.01, +0.03, -0.02) -> mean +1.00 points, SE = stdev / sqrt(3)
    assert "uni - tal on action_localisation: +0.67 +- 1.45" in text
    assert "uni - tsl on sound_localisation: +1.67 +- 0.88" in text
    assert "talb4 - tal on action_localisation: +3.00 +- 1.00" in text
    assert "talb4 - tsl" not in text
    assert "uni: one unified run / (TSL run + TAL run) = 1.00 (median over 3 seeds)" in text
    assert "talb4: one unified run" not in text


def test_summarize_skips_note_keys(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"_variants": {"tal": "configs/demo_tal_train.yaml"},
                             "tal": [{"seed": 1, "train_s": 5.0, "action_localisation": 0.5}]}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_unified.py"),
                          "--summarize", str(f)], capture_output=True, text=True, check=True)
    assert "| tal | 50.00 +- 0.00 | - | 5.0 |" in out.stdout
