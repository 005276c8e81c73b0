"""End-to-end tests of train.py and eval.py on a tiny version of the demo data (CPU).

The demo configs are used with ``--opt`` overrides that shrink the model and point at a tiny
generated copy of the demo data, so these tests exercise the real configs and CLIs.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as eval_cli
import train as train_cli
from libs.config.loader import load_config
from libs.modeling.detector import checkpoint_config
from libs.common.errors import UserError
from libs.modeling import Detector
from libs.common.seed import fix_random_seed

ROOT = Path(__file__).resolve().parents[2]


def tiny_opts(demo, **extra) -> list:
    d = demo["data"]
    opts = {
        "dataset.annotation_file": d / "annotations.json",
        "dataset.modalities.0.path": d / "features" / "beats",
        "dataset.modalities.1.path": d / "features" / "umt",
        "output_folder": demo["root"] / "ckpt",
        "model.embd_dim": 16, "model.n_head": 2, "loader.batch_size": 4, "loader.eval_batch_size": 2,
        "loader.num_workers": 0, "opt.epochs": 1, "opt.warmup_epochs": 1, "train.ckpt_freq": 1,
        "train.eval_freq": 0, "test_cfg.nms.max_seg_num": 50,
    }
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def run_train(demo, output, *more, config="configs/demo_tsl_train.yaml", **opts):
    argv = [str(ROOT / config), "--output", output, "--device", "cpu", "--no-progress", *more,
            "--opt", *tiny_opts(demo, **opts)]
    assert train_cli.main(argv) == 0
    return demo["root"] / "ckpt" / f"{Path(config).stem}_{output}"


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bit_identical(demo):
    # 4 videos, batch 4: one iteration per epoch; 2 epochs = 2 iterations
    full = run_train(demo, "full")
    part = run_train(demo, "part", **{"opt.early_stop_epochs": 1})
    assert not (part / "epoch_002.pth.tar").exists()
    run_train(demo, "part", "--resume", str(part / "epoch_001.pth.tar"))
    a, b = load(full / "epoch_002.pth.tar"), load(part / "epoch_002.pth.tar")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 2
    assert_same_state(a["state_dict"], b["state_dict"])
    assert_same_state(a["state_dict_ema"], b["state_dict_ema"])
    assert a["loss_normalizer"] == b["loss_normalizer"]
    # the run folder holds what docs/numerics.md s.10.1 lists
    for name in ("config.yaml", "train.log", "logs", "epoch_001.pth.tar"):
        assert (full / name).exists(), name
    assert {"epoch", "state_dict", "state_dict_ema", "optimizer", "scheduler", "loss_normalizer",
            "config", "label_map"} <= set(a)
    assert load_config(full / "config.yaml").to_dict() == a["config"]


def test_ema_warmup_moves_ema_on_a_short_run(demo):
    def ema_share(output, warmup):
        exp = run_train(demo, output, **{"train.ema_warmup": warmup})
        ckpt = load(exp / "epoch_002.pth.tar")
        cfg = checkpoint_config(ckpt, "epoch_002")
        fix_random_seed(cfg.seed)
        init = Detector.from_config(cfg).state_dict()
        num = den = 0.0
        for k, w0 in init.items():
            num += float((ckpt["state_dict_ema"][k] - w0).norm() ** 2)
            den += float((ckpt["state_dict"][k] - w0).norm() ** 2)
        return (num / den) ** 0.5   # how far the EMA moved, relative to the raw weights

    assert ema_share("ema_on", True) > 0.5       # decays 2/11, 3/12: EMA follows the weights
    assert ema_share("ema_off", False) < 0.01    # fixed 0.999: still ~99.8% initial weights


def test_validation_during_training_keeps_best(demo):
    exp = run_train(demo, "val", **{"train.eval_freq": 1})
    assert (exp / "best.pth.tar").exists()
    log_text = (exp / "train.log").read_text()
    assert "validation (EMA weights): average mAP" in log_text
    best = load(exp / "best.pth.tar")
    assert 0.0 <= best["best_map"] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(exp / "logs"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert "validation/timeline" in tags["images"]
    assert {"validation/average_mAP", "validation/mAP@0.5"} <= set(tags["scalars"])
    per_class = [t for t in tags["scalars"] if t.startswith("validation_class_AP/")]
    ann = json.loads((demo["data"] / "annotations.json").read_text())
    present = {e["label_id"] for v in ann.values() if v["metadata"]["split"] == "valid"
               for e in v["sound_localisation"]}
    assert sorted(per_class) == sorted(f"validation_class_AP/{c:02d} {best['label_map'][c]}"
                                       for c in present)
    image = events.Images("validation/timeline")[-1]
    assert image.width > 300 and image.height > 100


def test_eval_writes_submission_and_metrics_and_refuses_overwrite(demo, capsys):
    exp = run_train(demo, "evalme")
    cfg = str(ROOT / "configs/demo_tsl_valid.yaml")
    base = ["--device", "cpu", "--no-progress", "--opt", *tiny_opts(demo)]
    assert eval_cli.main([cfg, str(exp), "-epoch", "1", *base]) == 0
    table = capsys.readouterr().out
    assert "tIoU = 0.10: mAP =" in table and "Average mAP:" in table
    results, metrics = exp / "valid_epoch_001_results.json", exp / "valid_epoch_001_metrics.json"
    sub = json.loads(results.read_text())
    ann = json.loads((demo["data"] / "annotations.json").read_text())
    valid_ids = {k for k, v in ann.items() if v["metadata"]["split"] == "valid"}
    assert set(sub) == valid_ids
    for dets in (v["sound_localisation"] for v in sub.values()):
        scores = [float(d["score"]) for d in dets]
        assert scores == sorted(scores, reverse=True) and len(dets) <= 50
        assert all(0.0 <= d["timestamps"][0] <= d["timestamps"][1] for d in dets)
    m = json.loads(metrics.read_text())
    assert set(m["map_per_tiou"]) == {"0.10", "0.20", "0.30", "0.40", "0.50"}
    before = results.read_bytes()
    with pytest.raises(UserError, match="result file exists"):
        eval_cli.main([cfg, str(exp), "-epoch", "1", *base])
    assert results.read_bytes() == before
    assert eval_cli.main([cfg, str(exp), "-epoch", "1", "--overwrite", *base]) == 0


def test_eval_report_and_the_training_yaml_with_split(demo, tmp_path, capsys):
    """eval.py with the training YAML and --split valid equals the valid twin; --report writes
    the HTML report whose average mAP is the printed one."""
    exp = run_train(demo, "report")
    base = ["-epoch", "1", "--device", "cpu", "--no-progress"]
    twin, train_yaml = str(ROOT / "configs/demo_tsl_valid.yaml"), str(ROOT / "configs/demo_tsl_train.yaml")
    assert eval_cli.main([twin, str(exp), *base, "--out", str(tmp_path / "a.json"), "--opt",
                          *tiny_opts(demo)]) == 0
    report = tmp_path / "report"
    assert eval_cli.main([train_yaml, str(exp), "--split", "valid", *base, "--out",
                          str(tmp_path / "b.json"), "--report", str(report), "--opt",
                          *tiny_opts(demo)]) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    rep = json.loads((report / "report.json").read_text())
    metrics = json.loads((tmp_path / "b_metrics.json").read_text())
    assert rep["average_map"] == pytest.approx(metrics["average_map"], abs=1e-12)
    assert (report / "index.html").exists() and list((report / "img").glob("*.png"))
    with pytest.raises(UserError, match="report"):      # refused before predicting
        eval_cli.main([train_yaml, str(exp), "--split", "valid", *base, "--out",
                       str(tmp_path / "c.json"), "--report", str(report), "--opt", *tiny_opts(demo)])
    assert not (tmp_path / "c.json").exists()


def predictions_per_batch_size(demo, tmp_path, exp, sizes, **opts) -> list:
    """eval.py --saveonly with each loader.eval_batch_size in ``sizes``; the submissions."""
    outs = []
    for bs in sizes:
        out = tmp_path / f"bs{bs}.json"
        argv = [str(ROOT / "configs/demo_tsl_valid.yaml"), str(exp), "--saveonly", "--out", str(out),
                "--device", "cpu", "--no-progress", "--opt",
                *tiny_opts(demo, **{"loader.eval_batch_size": bs, **opts})]
        assert eval_cli.main(argv) == 0
        outs.append(json.loads(out.read_text()))
    return outs


def assert_same_detections(a_sub: dict, b_sub: dict) -> None:
    """The same detections per video; batched conv/matmul kernels may round differently (~1e-8)."""
    assert a_sub.keys() == b_sub.keys()
    for vid in a_sub:
        a, b = (sorted((int(d["label"]), *d["timestamps"], float(d["score"]))
                       for d in o[vid]["sound_localisation"]) for o in (a_sub, b_sub))
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=0, atol=1e-5)


def test_eval_batch_size_does_not_change_detections(demo, tmp_path):
    exp = run_train(demo, "batch")
    assert_same_detections(*predictions_per_batch_size(demo, tmp_path, exp, (1, 2)))


def test_batch_size_invariance_holds_for_unequal_lengths_too(demo, tmp_path):
    """Without force_upsampling videos keep their own lengths (> max_seq_len): the inference
    batches group equal padded lengths, so batch size 1 and 4 still agree."""
    exp = run_train(demo, "lengths")
    # global attention (same weights): max_div_factor 32, so the two valid videos (216 and 232
    # cells) pad to 224 and 256
    outs = predictions_per_batch_size(
        demo, tmp_path, exp, (1, 4), **{"dataset.force_upsampling": False,
                                        "model.max_buffer_len_factor": 6.0,
                                        "model.n_mha_win_size": "[-1,-1,-1,-1,-1,-1]"})
    assert_same_detections(*outs)


def test_saveonly_on_test_split_needs_no_labels(demo, tmp_path):
    exp = run_train(demo, "testsplit")
    out = tmp_path / "test.json"
    argv = [str(ROOT / "configs/demo_tsl_test.yaml"), str(exp), "--saveonly", "--out", str(out),
            "--device", "cpu", "--no-progress", "--opt", *tiny_opts(demo)]
    assert eval_cli.main(argv) == 0
    sub = json.loads(out.read_text())
    assert len(sub) == 2 and all("sound_localisation" in v for v in sub.values())
    assert not Path(str(out.with_suffix("")) + "_metrics.json").exists()
    # without --saveonly a split with no labels is refused before anything is predicted
    with pytest.raises(UserError, match="--saveonly"):
        eval_cli.main([argv[0], argv[1], "--out", str(tmp_path / "t2.json"), *argv[5:]])
    assert not (tmp_path / "t2.json").exists()


def test_non_finite_loss_stops_with_video_ids_and_keeps_checkpoint(demo, tmp_path):
    exp = run_train(demo, "nan", **{"opt.early_stop_epochs": 1})
    good = (exp / "epoch_001.pth.tar").read_bytes()
    # a copy of the data with NaN features for one training video
    import shutil
    data = tmp_path / "data"
    shutil.copytree(demo["data"], data)
    ann = json.loads((data / "annotations.json").read_text())
    vid = sorted(k for k, v in ann.items() if v["metadata"]["split"] == "train")[0]
    feats = np.load(data / "features" / "beats" / f"{vid}.npy")
    feats[5:9] = 3e38   # finite: passes the up-front check, overflows in the model
    np.save(data / "features" / "beats" / f"{vid}.npy", feats)
    proc = subprocess.run(
        [sys.executable, "train.py", "configs/demo_tsl_train.yaml", "--resume",
         str(exp / "epoch_001.pth.tar"), "--device", "cpu", "--no-progress",
         "--resume-override", "dataset.annotation_file", "dataset.modalities.*.path", "--opt",
         *tiny_opts({"data": data, "root": demo["root"]})],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "Traceback" not in proc.stderr
    assert "non-finite loss" in err_lines[0] and "epoch 2" in err_lines[0] and vid in err_lines[0]
    others = [k for k, v in ann.items() if v["metadata"]["split"] == "train" and k != vid]
    assert not any(o in err_lines[0] for o in others)   # only the video with bad features
    assert (exp / "epoch_001.pth.tar").read_bytes() == good
    assert not (exp / "epoch_002.pth.tar").exists()


def test_cli_user_errors_are_one_line(demo, tmp_path):
    cases = [
        [sys.executable, "train.py", "configs/demo_tsl_train.yaml", "--opt", "opt.learning_rat=0.1"],
        [sys.executable, "eval.py", "configs/demo_tsl_valid.yaml", str(tmp_path / "no_such_run")],
        [sys.executable, "train.py", "configs/demo_tsl_train.yaml", "--device", "cpu", "--opt",
         *tiny_opts(demo, **{"dataset.modalities.1.path": tmp_path / "missing_umt"})],
    ]
    expected = ["did you mean 'opt.learning_rate'?", "no_such_run", "missing_umt"]
    ckpt_root = demo["root"] / "ckpt"
    runs_before = sorted(ckpt_root.iterdir()) if ckpt_root.exists() else []
    for argv, needle in zip(cases, expected):
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr
        assert "Traceback" not in proc.stderr
    # bad data is found before the run folder is created: nothing is left behind
    assert (sorted(ckpt_root.iterdir()) if ckpt_root.exists() else []) == runs_before


def test_save_raw_then_fuse_two_checkpoints(demo, tmp_path):
    exp = run_train(demo, "fuse")
    cfg = str(ROOT / "configs/demo_tsl_valid.yaml")
    raws = []
    for epoch in (1, 2):
        raw = tmp_path / f"raw{epoch}"
        argv = [cfg, str(exp), "-epoch", str(epoch), "--out", str(tmp_path / f"e{epoch}.json"),
                "--save-raw", str(raw), "--device", "cpu", "--no-progress", "--opt", *tiny_opts(demo)]
        assert eval_cli.main(argv) == 0
        meta = json.loads((raw / "meta.json").read_text())
        assert meta["task"] == "sound_localisation" and meta["epoch"] == epoch
        assert len(list(raw.glob("*.npz"))) == 2
        raws.append(str(raw))
    out = tmp_path / "fused.json"
    proc = subprocess.run(
        [sys.executable, "tools/fuse_results.py", *raws, "--out", str(out), "--mode", "wbf",
         "--annotations", str(demo["data"] / "annotations.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Average mAP" in proc.stdout
    assert len(json.loads(out.read_text())) == 2


def test_two_process_ddp_training_on_cpu(demo):
    """torchrun with 2 CPU processes (gloo): one run folder, checkpoints written by rank 0;
    2 processes x batch 1 x train.accum_steps 2 train like 1 process x batch 4 (DDP's average
    of the summed loss, all-reduced on the last micro-batch only), and the validation each epoch
    is split across the processes."""
    # deterministic and far-moving: no stochastic depth, SGD at a large learning rate
    same = {"model.droppath": 0.0, "opt.type": "SGD", "opt.learning_rate": 0.1,
            "train.eval_freq": 1, "loader.eval_batch_size": 1}
    ref = load(run_train(demo, "ddp_ref", **same) / "epoch_002.pth.tar")
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "train.py",
         "configs/demo_tsl_train.yaml", "--output", "ddp", "--device", "cpu", "--no-progress",
         "--opt", *tiny_opts(demo, **same, **{"loader.batch_size": 1, "train.accum_steps": 2})],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    exp = demo["root"] / "ckpt" / "demo_tsl_train_ddp"
    log_text = (exp / "train.log").read_text()
    assert "(2 processes), effective batch 4" in log_text
    assert log_text.count("validation (EMA weights): average mAP") == 2
    ckpt = load(exp / "epoch_002.pth.tar")
    # 4 videos, 2 per process per step: one optimizer step per epoch
    assert ckpt["global_step"] == ref["global_step"] == 2
    for key in ("state_dict", "state_dict_ema"):
        diff = max((ckpt[key][k] - ref[key][k]).abs().max().item() for k in ref[key])
        assert diff < 1e-5, key
    assert ckpt["loss_normalizer"]["value"] == pytest.approx(ref["loss_normalizer"]["value"])
    assert ckpt["best_map"] == pytest.approx(ref["best_map"], abs=1e-6)


def test_eval_with_external_class_scores(demo, tmp_path):
    exp = run_train(demo, "ext")
    ann = json.loads((demo["data"] / "annotations.json").read_text())
    valid = sorted(k for k, v in ann.items() if v["metadata"]["split"] == "valid")
    rng = np.random.default_rng(0)
    scores = {vid: rng.uniform(0.0, 1.0, 12).round(3).tolist() for vid in valid}
    ext = tmp_path / "ext.json"
    ext.write_text(json.dumps({"results": scores}))
    def argv(out):
        return [str(ROOT / "configs/demo_tsl_valid.yaml"), str(exp), "--saveonly", "--out", str(out),
                "--device", "cpu", "--no-progress", "--opt",
                *tiny_opts(demo, **{"test_cfg.ext_score_file": ext, "test_cfg.ext_score_num_pred": 10})]

    out = tmp_path / "ext_results.json"
    assert eval_cli.main(argv(out)) == 0
    sub = json.loads(out.read_text())
    for vid in valid:
        top2 = set(np.argsort(scores[vid])[-2:].tolist())
        dets = sub[vid]["sound_localisation"]
        assert len(dets) == 20                       # 10 detections x top-2 classes
        assert {int(d["label"]) for d in dets} == top2
    # a video without external scores is an error before anything is predicted
    ext.write_text(json.dumps({valid[0]: scores[valid[0]]}))
    with pytest.raises(UserError, match=valid[1]):
        eval_cli.main(argv(tmp_path / "never_written.json"))
    assert not (tmp_path / "never_written.json").exists()


def test_original_config_trains_unchanged_and_logs_the_mapping(demo, caplog):
    """An original-project YAML (tests/data/original_configs) runs through train.py as it is."""
    import logging
    caplog.set_level(logging.INFO)
    d = demo["data"]
    argv = [str(ROOT / "tests/data/original_configs/perception_tsl_multi_train.yaml"), "--output", "orig",
            "--device", "cpu", "--no-progress", "--opt",
            f"dataset.annotation_file={d / 'annotations.json'}",
            f"dataset.modalities.0.path={d / 'features' / 'beats'}",
            f"dataset.modalities.1.path={d / 'features' / 'umt'}",
            f"output_folder={demo['root'] / 'ckpt'}", "model.embd_dim=16", "model.fpn_dim=16",
            "model.head_dim=16", "model.n_head=2", "loader.batch_size=4", "loader.num_workers=0",
            "opt.epochs=1", "opt.warmup_epochs=0"]
    assert train_cli.main(argv) == 0
    assert "is an original-project config; mapped to this schema" in caplog.text
    cfg = load(demo["root"] / "ckpt" / "perception_tsl_multi_train_orig" / "epoch_001.pth.tar")["config"]
    assert cfg["dataset"]["time_grid"] == "stride" and cfg["dataset"]["fps"] == 768.0
    assert cfg["train"]["ema_warmup"] is True       # warm-up on for original configs too


def test_eval_of_a_video_longer_than_the_point_buffers_is_a_user_error(demo, tmp_path):
    exp = run_train(demo, "long")
    # without force_upsampling a video keeps its BEATs rows (~50/s, > 192 cells for 4-6 s)
    argv = [str(ROOT / "configs/demo_tsl_valid.yaml"), str(exp), "--saveonly", "--out",
            str(tmp_path / "x.json"), "--device", "cpu", "--no-progress", "--opt",
            *tiny_opts(demo, **{"dataset.force_upsampling": False})]
    with pytest.raises(UserError, match="model.max_buffer_len_factor"):
        eval_cli.main(argv)
    assert not (tmp_path / "x.json").exists()
