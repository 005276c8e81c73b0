"""The helpers of benchmarks/compare_reference.py (the benchmark itself is not run by tests):
the reference's data layout holds the same features and events as ours, the checkpoint
conversion, the timing wrapper and the table's medians and ratios."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_data as cd  # noqa: E402
from compare_common import StopRun, TimedLoader, iteration_times  # noqa: E402
from compare_report import Report  # noqa: E402
from compare_run import SITE, ref_env  # noqa: E402
from libs.config import load_config  # noqa: E402
from libs.datasets import PerceptionDataset  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    d = cd.make_dataset(root / "data", num_train=6, num_valid=3, seed=0, min_duration=3.0,
                        max_duration=5.0, log=lambda *_: None)
    cfg = cd.write_configs(d, root / "run", num_train=4, width=128, seed=3)
    return d, cfg


def test_reference_layout_holds_our_features_and_events(data):
    d, cfg = data
    ours = load_config(cfg["ours"])
    assert ours.seed == 3 and ours.model.embd_dim == 128 and ours.loader.batch_size == 16
    ds = PerceptionDataset.from_config(ours, ["train", "valid"], is_training=False)
    assert [v.video_id for v in ds.videos] == d["ids"]["train"][:4] + d["ids"]["valid"]
    ref_cfg = yaml.safe_load(Path(cfg["ref"]).read_text())
    assert ref_cfg["dataset_name"] == "anet" and ref_cfg["dataset"]["file_prefix"] is None
    assert ref_cfg["model"] == yaml.safe_load(Path(cfg["ours"]).read_text())["model"]
    db = json.loads(Path(ref_cfg["dataset"]["json_file"]).read_text())["database"]
    for i, rec in enumerate(ds.videos):
        entry = db[rec.video_id]
        assert entry["subset"] == rec.split and entry["duration"] == pytest.approx(rec.duration)
        seg = np.array([a["segment"] for a in entry["annotations"]]).reshape(-1, 2)
        np.testing.assert_allclose(seg, rec.segments, rtol=0, atol=1e-9)
        assert [a["label_id"] for a in entry["annotations"]] == list(rec.labels)
        # what the reference's anet class computes from its file: (T, 1792) -> (1792, 192)
        raw = np.load(Path(ref_cfg["dataset"]["feat_folder"]) / f"{rec.video_id}.npy")
        theirs = F.interpolate(torch.from_numpy(raw.T.copy())[None], size=192, mode="linear",
                               align_corners=False)[0]
        torch.testing.assert_close(ds[i]["feats"], theirs, rtol=0, atol=1e-6)


def test_ref_checkpoint_adds_the_dataparallel_prefix(tmp_path):
    w = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    torch.save({"epoch": 3, "state_dict": w, "state_dict_ema": {k: v + 1 for k, v in w.items()}},
               tmp_path / "ours.pth.tar")
    out = torch.load(cd.ref_checkpoint(tmp_path / "ours.pth.tar", tmp_path / "ref.pth.tar"))
    assert out["epoch"] == 3 and set(out["state_dict"]) == {"module.a.weight", "module.b"}
    assert torch.equal(out["state_dict_ema"]["module.b"], torch.ones(1))


def test_timed_loader_times_iterations_and_stops():
    stamps, state, calls = [], {}, []
    loader = TimedLoader(range(10), stamps, limit=3, hooks={2: lambda: calls.append(len(stamps))},
                         state=state)
    seen = []
    with pytest.raises(StopRun):
        for batch in loader:
            seen.append(batch)
    assert seen == [0, 1, 2, 3] and len(stamps) == 4 and calls == [2]
    assert state["first_batch_time"] > 0 and len(loader) == 10
    assert iteration_times([0.0, 1.0, 3.0, 6.0], warmup=1) == [2.0, 3.0]


def test_report_medians_and_ratios():
    def train(times, pss, rss, first):
        return {"iter_times": times, "peak_pss_tree": pss, "peak_rss_main": rss,
                "launch_to_first_batch": first}
    res = {"train512_400": {"ref": [train([2.0, 3.0], 2e9, 1e9, 4.0)], "ours": [train([1.0], 4e9, 2e9, 2.0)]},
           "train128_400": {"ref": [train([0.6], 1e9, 1e9, 5.0)], "ours": [train([0.3], 1e9, 5e8, 1.0)]},
           "eval": {"ref": [{"infer": 30.0, "metric": 30.0, "average_map": 0.25}],
                    "ours": [{"infer": 10.0, "metric": 0.5, "average_map": 0.25}]},
           "metric": {"ref": [{"metric": 20.0}], "ours": [{"metric": 0.1}]}}
    rows = {r[0]: r[1:] for r in Report(res, [400], 300, 150_000).rows()}
    assert rows["train width 512, s/iteration"] == ("2.500 s", "1.000 s", "2.50")
    assert rows["train width 512, peak PSS (all processes)"] == ("2.00 GB", "4.00 GB", "0.50")
    assert rows["launch -> first batch, 400 videos"][2] == "5.00"
    assert rows["valid inference + NMS + metric, 300 videos"] == ("60.0 s", "10.5 s", "5.71")
    assert rows["metric alone, 150,000 predictions"][2] == "200.00"
    assert rows["valid average mAP (%), same weights, each side's metric"] == ("25.00", "25.00", "-")


@pytest.mark.skipif(not (SITE / "actionformer").is_dir(),
                    reason="reference not installed (python benchmarks/compare_reference.py)")
def test_initial_weights_equal_the_reference(data):
    """Same seed, same config: our freshly built model has the reference's weights exactly."""
    from libs.common.seed import fix_random_seed
    from libs.modeling import Detector
    d, cfg = data
    code = ("import sys, torch; from actionformer.core import load_config; "
            "from actionformer.modeling import make_meta_arch; "
            "from actionformer.utils import fix_random_seed; c = load_config(sys.argv[1]); "
            "fix_random_seed(c['init_rand_seed']); "
            "torch.save(make_meta_arch(c['model_name'], **c['model']).state_dict(), sys.argv[2])")
    out = Path(cfg["ref"]).parent / "ref_init.pt"
    subprocess.run([sys.executable, "-c", code, str(cfg["ref"]), str(out)], check=True, cwd="/",
                   env=dict(ref_env(1, True), CUDA_VISIBLE_DEVICES=""))
    theirs = torch.load(out)
    ours_cfg = load_config(cfg["ours"])
    fix_random_seed(ours_cfg.seed)
    ours = Detector.from_config(ours_cfg).state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_annotation_files_follow_a_regenerated_dataset(tmp_path):
    """The per-size annotation files are rewritten when the dataset under them changed (its
    validation ids depend on the dataset's size); a stale file named other videos."""
    def data(train, valid):
        ev = {"timestamps": [1e6, 2e6], "label": "a", "label_id": 0}
        ann = {v: {"metadata": {"split": s, "num_frames": 300, "frame_rate": 30.0},
                   "sound_localisation": [ev]}
               for s, ids in (("train", train), ("valid", valid)) for v in ids}
        return {"ann": ann, "root": tmp_path, "ids": {"train": train, "valid": valid}}

    first = cd.annotation_files(data(["t0", "t1", "t2"], ["v3"]), 2)
    assert set(json.loads(first["ours"].read_text())) == {"t0", "t1", "v3"}
    files = cd.annotation_files(data(["t0", "t1"], ["v2"]), 2)       # regenerated, smaller
    assert set(json.loads(files["ours"].read_text())) == {"t0", "t1", "v2"}
    db = json.loads(files["ref"].read_text())["database"]
    assert set(db) == {"t0", "t1", "v2"} and db["v2"]["subset"] == "valid"
    assert db["t0"]["duration"] == 10.0 and db["t0"]["annotations"][0]["segment"] == [1.0, 2.0]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_rows_only_on_a_cpu_with_native_bf16(monkeypatch, capsys, native):
    import compare_reference as cr
    from libs.common import distributed
    monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: native)
    bench = cr.Bench(cr.parse_args(["--mem-videos", "400"]))
    assert bench.bf16 is native
    assert ("no bf16 rows: this CPU has no native bfloat16" in capsys.readouterr().out) is not native
    assert cr.Bench(cr.parse_args(["--no-bf16"])).bf16 is False


def test_skip_names_steps():
    import compare_reference as cr
    assert cr.parse_args(["--skip", "metric,train"]).skip == {"metric", "train"}
    assert cr.parse_args([]).skip == set()
    with pytest.raises(SystemExit) as err:
        cr.parse_args(["--skip", "eval,nms"])
    assert err.value.code == 2


def test_flop_count_charges_a_grouped_conv_backward_once_per_gradient():
    from compare_floor import count_flops
    x = torch.randn(2, 64, 40, requires_grad=True)
    dw = torch.randn(64, 1, 3, requires_grad=True)            # depthwise
    dense = torch.randn(32, 64, 3, requires_grad=True)
    fwd_dw, fwd_dense = 2 * 2 * 40 * 64 * 3, 2 * 2 * 40 * 32 * 64 * 3
    got = count_flops(lambda: F.conv1d(F.conv1d(x, dw, padding=1, groups=64), dense,
                                       padding=1).sum().backward())
    assert got["conv"] == 3 * fwd_dw + 3 * fwd_dense          # forward, grad input, grad weight
    frozen = torch.randn(2, 64, 40)                           # no grad input asked for
    got = count_flops(lambda: F.conv1d(frozen, dense, padding=1).sum().backward())
    assert got == {"conv": 2 * fwd_dense, "matmul": 0.0}
    lin = torch.randn(8, 64, requires_grad=True)
    assert count_flops(lambda: F.linear(lin, torch.randn(16, 64)))["matmul"] == 2 * 8 * 64 * 16


def test_model_flops_training_is_three_forwards_less_the_input_gradient(data):
    from compare_floor import floor_seconds, model_flops
    cfg = load_config(data[1]["ours"])
    one, two = model_flops(cfg, 1), model_flops(cfg, 2)
    assert two["infer"]["conv"] == 2 * one["infer"]["conv"] > 0
    assert two["infer"]["matmul"] == 2 * one["infer"]["matmul"] > 0
    # backward = grad input + grad weight of every conv and matmul, except the grad of the input
    # features in the first embedding conv (k3, input_dim -> width over max_seq_len cells)
    first = 2 * cfg.dataset.max_seq_len * cfg.derived.input_dim * 3 * cfg.model.embd_dim
    assert one["train"]["conv"] == 3 * one["infer"]["conv"] - first
    assert one["train"]["matmul"] == pytest.approx(3 * one["infer"]["matmul"], rel=1e-12)
    assert floor_seconds({"conv": 4e9, "matmul": 3e9}, {"conv": 2.0, "matmul": 3.0}) == 3.0


def test_report_floor_bounds_the_ratio():
    res = {"train512_400": {"ref": [{"iter_times": [9.0]}], "ours": [{"iter_times": [6.0]}]},
           "eval": {"ref": [{"infer": 60.0, "metric": 90.0}], "ours": [{"infer": 40.0, "metric": 0.5}]},
           "floor": {"ours": [{"batch": 16, "rates": {"conv": 100.0, "matmul": 50.0},
                               "flops": {"train": {"conv": 200e9, "matmul": 100e9},
                                         "infer": {"conv": 16e9, "matmul": 16e9}},
                               "train_floor": 4.0, "infer_floor_per_video": 0.1}]}}
    lines = Report(res, [400], 300, 1).floor().splitlines()
    assert "conv 100 GFLOP/s, matmul 50 GFLOP/s" in lines[0]
    rows = {r.split(" | ")[0].lstrip("| "): r.split(" | ")[1:] for r in lines[4:]}
    assert rows["train width 512, s/iteration (batch 16)"] == [
        "300.0 (200.0 + 100.0)", "4.00 s", "9.000 s", "6.000 s", "67%", "2.25 |"]
    assert rows["valid inference + NMS, 300 videos"][1:] == ["30.00 s", "60.0 s", "40.0 s", "75%", "2.00 |"]
    assert rows["valid inference + NMS + metric, 300 videos"][-1] == "5.00 |"
    assert Report({}, [400], 300, 1).floor() == ""
