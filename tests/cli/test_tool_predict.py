"""tools/predict.py and the Localiser API: a checkpoint on feature folders, no annotation file;
the same detections as eval.py --saveonly on the same videos."""
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
import tools.predict as predict_tool
from libs.common.errors import UserError
from libs.evaluation.localiser import Localiser
from tools.make_demo_data import generate_demo_data

ROOT = Path(__file__).resolve().parents[2]
TASK = "sound_localisation"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    generate_demo_data(data, seed=1, num_train=4, num_valid=1, num_test=3, min_duration=4.0,
                       max_duration=7.0)
    # One video per inference batch everywhere: the Localiser predicts one video at a time, and
    # CPU kernels round differently for another batch composition (scores then differ by ~2e-7
    # relative; with the same batches the detections are identical, as tested here).
    opts = {"dataset.annotation_file": data / "annotations.json",
            "dataset.modalities.0.path": data / "features" / "beats",
            "dataset.modalities.1.path": data / "features" / "umt",
            "output_folder": root / "ckpt", "model.embd_dim": 16, "model.n_head": 2,
            "loader.batch_size": 4, "loader.eval_batch_size": 1, "loader.num_workers": 0,
            "opt.epochs": 1, "opt.warmup_epochs": 1, "train.eval_freq": 0,
            "test_cfg.nms.max_seg_num": 40}
    opt_list = [f"{k}={v}" for k, v in opts.items()]
    cfg = str(ROOT / "configs" / "demo_tsl_train.yaml")
    assert train_cli.main([cfg, "--output", "p", "--device", "cpu", "--no-progress", "--threads",
                           "1", "--opt", *opt_list]) == 0
    run = root / "ckpt" / "demo_tsl_train_p"
    ckpt = sorted(run.glob("epoch_*.pth.tar"))[-1]
    ann = json.loads((data / "annotations.json").read_text())
    test_ids = sorted(v for v, e in ann.items() if e["metadata"]["split"] == "test")
    durations = {v: ann[v]["metadata"]["num_frames"] / ann[v]["metadata"]["frame_rate"] for v in ann}
    csv = root / "durations.csv"
    csv.write_text("video_id,duration\n" + "".join(f"{v},{d!r}\n" for v, d in durations.items()))
    ref = root / "eval_test.json"
    assert eval_cli.main([cfg, str(ckpt), "--split", "test", "--saveonly", "--device", "cpu",
                          "--no-progress", "--out", str(ref), "--opt", *opt_list]) == 0
    return {"root": root, "data": data, "ckpt": ckpt, "csv": csv, "test_ids": test_ids,
            "durations": durations, "reference": json.loads(ref.read_text())}


def features(t):
    d = t["data"] / "features"
    return ["--features", f"beats={d / 'beats'}", "--features", f"umt={d / 'umt'}"]


def run_predict(t, *args):
    return predict_tool.main([str(t["ckpt"]), *features(t), "--device", "cpu", "--no-progress",
                              "--threads", "1", *map(str, args)])


def test_same_detections_as_eval_saveonly(trained):
    out = trained["root"] / "pred.json"
    assert run_predict(trained, "--durations", trained["csv"], "--videos", *trained["test_ids"],
                       "--out", out) == 0
    got = json.loads(out.read_text())
    assert list(got) == trained["test_ids"]
    assert got == trained["reference"]                    # same entries, scores and times
    assert sum(len(v[TASK]) for v in got.values()) > 0


def test_every_video_of_the_folder_by_default_and_refuses_to_overwrite(trained):
    out = trained["root"] / "all.json"
    assert run_predict(trained, "--durations", trained["csv"], "--out", out) == 0
    got = json.loads(out.read_text())
    assert sorted(got) == sorted(trained["durations"])    # every feature file is a video
    for vid in trained["test_ids"]:
        assert got[vid] == trained["reference"][vid]
    with pytest.raises(UserError, match="already exists"):
        run_predict(trained, "--durations", trained["csv"], "--out", out)


def test_durations_estimated_from_the_beats_rows(trained):
    out = trained["root"] / "est.json"
    assert run_predict(trained, "--videos", *trained["test_ids"], "--out", out) == 0
    got = json.loads(out.read_text())
    for vid in trained["test_ids"]:
        rows = np.load(trained["data"] / "features" / "beats" / f"{vid}.npy").shape[0]
        estimate = (rows / 8 * 16 + 2) / 100                # docs: D = (N/8*16 + 2)/100
        assert 0 <= trained["durations"][vid] - estimate <= 0.16 + 1e-9
        ends = [e["timestamps"][1] for e in got[vid][TASK]]
        assert max(ends) <= estimate + 1e-6


def test_localiser_api_gives_the_same_detections(trained):
    loc = Localiser.from_checkpoint(trained["ckpt"], device="cpu")
    assert loc.modalities == ["beats", "umt"]
    vid = trained["test_ids"][0]
    d = trained["data"] / "features"
    feats = {"beats": np.load(d / "beats" / f"{vid}.npy"),
             "umt": torch.load(d / "umt" / f"{vid}.pt", weights_only=True)}
    det = loc.predict(feats, duration=trained["durations"][vid])
    ref = trained["reference"][vid][TASK]
    assert len(det) == len(ref) > 0
    assert [str(int(c)) for c in det.labels] == [e["label"] for e in ref]
    assert [repr(float(s)) for s in det.scores] == [e["score"] for e in ref]
    np.testing.assert_array_equal(det.segments.astype(np.float64),
                                  np.array([e["timestamps"] for e in ref]))
    assert det.label_names[0] == loc.label_names[int(det.labels[0])]
    with pytest.raises(UserError, match=r"expected exactly the modalities \['beats', 'umt'\]"):
        loc.predict({"beats": feats["beats"]}, duration=5.0)
    with pytest.raises(UserError, match=r"bad feature shape \(modality 'umt'\)"):
        loc.predict({"beats": feats["beats"], "umt": np.zeros((4, 3))}, duration=5.0)
    bad = np.array(feats["beats"])
    bad[3, 0] = np.nan
    with pytest.raises(UserError, match="1 of .* rows hold NaN or inf"):
        loc.predict({"beats": bad, "umt": feats["umt"]}, duration=5.0)


@pytest.mark.parametrize("args, needle", [
    (["--features", "beats=/x"], "no --features umt=DIR"),
    (["--features", "audio=/x", "--features", "umt=/y"], "unknown modality 'audio'"),
    (["--features", "beats"], "expected NAME=DIR"),
])
def test_bad_features_arguments(trained, args, needle):
    with pytest.raises(UserError, match=needle):
        predict_tool.main([str(trained["ckpt"]), *args, "--out", str(trained["root"] / "x.json")])


def test_bad_videos_durations_and_output(trained, tmp_path):
    out = str(tmp_path / "o.json")
    with pytest.raises(UserError, match="--videos not in the primary feature folder.*'nope'"):
        run_predict(trained, "--videos", "nope", "--out", out)
    short = tmp_path / "short.csv"
    short.write_text("video_id,duration\n" + f"{trained['test_ids'][0]},5.0\n")
    with pytest.raises(UserError, match=f"videos without a duration \\({short}\\)"):
        run_predict(trained, "--durations", short, "--out", out)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="is a file, expected a folder"):
        run_predict(trained, "--out", blocker / "sub.json")


def test_command_line_one_line_error(trained):
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "predict.py"), str(trained["ckpt"]),
                          "--features", "beats=/nowhere", "--features", "umt=/nowhere",
                          "--out", str(trained["root"] / "n.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode == 2 and lines == ["error: feature folder not found (/nowhere): expected a "
                                             "folder of <video_id>.npy|.pt files or an .h5 file"]
