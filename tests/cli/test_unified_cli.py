"""train.py / eval.py with one unified model for action and sound localisation (tiny demo data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval as eval_cli
import train as train_cli
from datagen import write_challenge_task_files
from libs.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "demo_unified_train.yaml")
TASKS = ("action_localisation", "sound_localisation")


def opts(demo, **extra) -> list:
    d = demo["data"] / "features"
    values = {"dataset.annotation_file": demo["data"] / "annotations.json",
              "dataset.modalities.0.path": d / "umt", "dataset.modalities.1.path": d / "videomae",
              "dataset.modalities.2.path": d / "beats", "output_folder": demo["root"] / "ckpt",
              "model.embd_dim": 16, "model.n_head": 2, "loader.batch_size": 4,
              "loader.eval_batch_size": 2, "opt.epochs": 1, "opt.warmup_epochs": 1,
              "train.ckpt_freq": 1, "train.eval_freq": 1, "test_cfg.nms.max_seg_num": 30}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def train(demo, name, **extra) -> Path:
    assert train_cli.main([CONFIG, "--output", name, "--device", "cpu", "--no-progress",
                           "--opt", *opts(demo, **extra)]) == 0
    return demo["root"] / "ckpt" / f"demo_unified_train_{name}"


def test_unified_train_eval_submission_and_metrics(demo, capsys):
    per_task = {"test_cfg.per_task": "{sound_localisation: {nms: {max_seg_num: 7}}}"}
    run = train(demo, "u")
    assert (run / "best.pth.tar").exists()
    out = run / "valid.json"
    assert eval_cli.main([CONFIG, str(run), "--split", "valid", "--device", "cpu", "--no-progress",
                          "--out", str(out), "--opt", *opts(demo, **per_task)]) == 0
    printed = capsys.readouterr().out
    assert "[action_localisation]" in printed and "[sound_localisation]" in printed
    assert "Mean of the tasks' average mAPs" in printed
    sub = json.loads(out.read_text())
    ann = json.loads((demo["data"] / "annotations.json").read_text())
    valid = [v for v, e in ann.items() if e["metadata"]["split"] == "valid"]
    assert sorted(sub) == sorted(valid)
    for vid in valid:                                    # both lists for every video
        assert set(sub[vid]) == set(TASKS)
        assert 0 < len(sub[vid]["sound_localisation"]) <= 7       # the per-task override
        assert 0 < len(sub[vid]["action_localisation"]) <= 30
        assert all(int(e["label"]) < 16 for e in sub[vid]["action_localisation"])
        assert all(int(e["label"]) < 12 for e in sub[vid]["sound_localisation"])
    metrics = json.loads((run / "valid_metrics.json").read_text())
    maps = [metrics["tasks"][t]["average_map"] for t in TASKS]
    assert metrics["average_map"] == pytest.approx(sum(maps) / 2)
    assert metrics["task"] == list(TASKS)
    test_out = run / "test.json"
    assert eval_cli.main([CONFIG, str(run), "--split", "test", "--saveonly", "--device", "cpu",
                          "--no-progress", "--out", str(test_out), "--opt", *opts(demo)]) == 0
    test_sub = json.loads(test_out.read_text())
    assert len(test_sub) == 2 and all(set(v) == set(TASKS) for v in test_sub.values())


def test_per_task_files_and_missing_task(demo, caplog):
    files = write_challenge_task_files(str(demo["data"] / "annotations.json"),
                                       str(demo["root"] / "challenge"))
    sound_train = Path(files["sound_localisation"]["train"])
    ann = json.loads(sound_train.read_text())
    dropped = sorted(ann)[0]
    ann.pop(dropped)
    sound_train.write_text(json.dumps(ann))
    listed = "[" + ", ".join(str(p) for t in TASKS for p in files[t].values()) + "]"
    with pytest.raises(UserError, match=f"video '{dropped}'.*sound_localisation"):
        train(demo, "missing", **{"dataset.annotation_file": listed})
    caplog.set_level("INFO")
    run = train(demo, "allowed", **{"dataset.annotation_file": listed,
                                    "dataset.allow_missing_task": "true", "train.eval_freq": 0})
    assert (run / "epoch_001.pth.tar").exists()
    assert any("1 of 4 videos without a 'sound_localisation' list" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records][-20:]


def test_a_single_task_yaml_cannot_evaluate_a_unified_checkpoint(demo):
    run = demo["root"] / "ckpt" / "demo_unified_train_u"
    if not run.exists():
        run = train(demo, "u")
    tal = str(ROOT / "configs" / "demo_tal_train.yaml")
    with pytest.raises(UserError, match=r"task 'action_localisation' in the config, "
                                        r"\['action_localisation', 'sound_localisation'\] in the "
                                        r"checkpoint"):
        eval_cli.main([tal, str(run), "--split", "valid", "--device", "cpu", "--no-progress",
                       "--out", str(run / "x.json"), "--opt", *opts(demo)])


def test_predict_tool_and_localiser_give_both_tasks(demo):
    import tools.predict as predict_tool
    from libs.evaluation.localiser import Localiser
    import numpy as np
    import torch

    run = demo["root"] / "ckpt" / "demo_unified_train_u"
    if not run.exists():
        run = train(demo, "u")
    ref = run / "test_ref.json"
    assert eval_cli.main([CONFIG, str(run), "--split", "test", "--saveonly", "--device", "cpu",
                          "--no-progress", "--out", str(ref), "--overwrite", "--opt",
                          *opts(demo)]) == 0
    ann = json.loads((demo["data"] / "annotations.json").read_text())
    test_ids = sorted(v for v, e in ann.items() if e["metadata"]["split"] == "test")
    csv = demo["root"] / "durations.csv"
    csv.write_text("video_id,duration\n" + "".join(
        f"{v},{ann[v]['metadata']['num_frames'] / ann[v]['metadata']['frame_rate']!r}\n"
        for v in test_ids))
    d = demo["data"] / "features"
    out = demo["root"] / "pred.json"
    assert predict_tool.main([str(run), "--features", f"umt={d / 'umt'}", "--features",
                              f"videomae={d / 'videomae'}", "--features", f"beats={d / 'beats'}",
                              "--durations", str(csv), "--videos", *test_ids, "--device", "cpu",
                              "--no-progress", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(ref.read_text())   # same as eval --saveonly
    loc = Localiser.from_checkpoint(sorted(run.glob("epoch_*.pth.tar"))[-1], device="cpu")
    vid = test_ids[0]
    feats = {"umt": torch.load(d / "umt" / f"{vid}.pt"), "videomae": torch.load(d / "videomae" / f"{vid}.pt"),
             "beats": np.load(d / "beats" / f"{vid}.npy")}
    det = loc.predict(feats, duration=ann[vid]["metadata"]["num_frames"] / ann[vid]["metadata"]["frame_rate"])
    assert set(det.tasks) == set(TASKS)
    snd = [i for i, t in enumerate(det.tasks) if t == "sound_localisation"]
    assert all(0 <= det.labels[i] < 12 for i in snd)
    # names from the checkpoint's label map (the training videos' events); a class without
    # training events is named by its id within the task, the id in det.labels
    named = {e["label_id"]: e["label"] for v in ann.values() if v["metadata"]["split"] == "train"
             for e in v["sound_localisation"]}
    assert all(det.label_names[i] == named.get(int(det.labels[i]), str(int(det.labels[i])))
               for i in snd)
    assert all(named[c].startswith("Sound:") for c in named)
