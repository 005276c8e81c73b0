"""tools/make_annotations.py: metadata-only annotation files for new videos."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from libs.common.errors import UserError
from libs.datasets.annotations import load_annotations

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_annotations as ma  # noqa: E402

FPS = 30.0
# BEATs rows N_a = 8*floor((100*D - 2)/16) for these frame counts at 30 fps are exactly invertible.
BEATS = {"vid_a": 15, "vid_b": 39, "vid_c": 303}          # num_frames
UMT = {"vid_a": 16, "vid_b": 40, "vid_c": 300}            # num_frames (multiples of 4)


def beats_rows(num_frames: int) -> int:
    return 8 * int(np.floor((100.0 * num_frames / FPS - 2.0) / 16.0))


@pytest.fixture()
def feats(tmp_path):
    beats, umt = tmp_path / "beats", tmp_path / "umt"
    beats.mkdir()
    umt.mkdir()
    for vid, nf in BEATS.items():
        np.save(beats / f"{vid}.npy", np.zeros((beats_rows(nf), 4), np.float32))
    for vid, nf in UMT.items():
        torch.save(torch.zeros(nf // 4, 3), umt / f"{vid}.pt")
    (beats / "notes.txt").write_text("ignored")
    return tmp_path


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_annotations.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _durations(path, split="test"):
    ann = load_annotations(path, "sound_localisation", num_classes=12, splits=[split])
    load_annotations(path, "action_localisation", num_classes=63, splits=[split])
    return {v.video_id: v.duration for v in ann.videos}, ann


def test_csv_mode_cli_loads(feats):
    csv_path = feats / "frames.csv"
    csv_path.write_text("video_id,num_frames\n" + "".join(f"{v},{n}\n" for v, n in BEATS.items()))
    out = feats / "ann.json"
    res = _run("--features", str(feats / "beats"), "--features", str(feats / "umt"), "--out", str(out),
               "--num-frames-from", "csv", "--csv", str(csv_path))
    assert res.returncode == 0, res.stderr
    assert "3 videos" in res.stdout
    durs, ann = _durations(str(out))
    assert durs == {v: n / FPS for v, n in BEATS.items()}
    assert all(v.split == "test" and v.num_events == 0 and v.frame_rate == FPS for v in ann.videos)
    data = json.loads(out.read_text())
    assert list(data) == sorted(BEATS)
    assert data["vid_a"] == {"metadata": {"video_id": "vid_a", "split": "test", "num_frames": 15,
                                          "frame_rate": 30.0},
                             "sound_localisation": [], "action_localisation": []}


def test_csv_duration_column(feats):
    csv_path = feats / "dur.csv"
    csv_path.write_text("video_id,duration_s\nvid_a,0.5\nvid_b,1.31\nvid_c,10.1\n")
    out = feats / "ann.json"
    assert ma.main(["--features", str(feats / "beats"), "--out", str(out), "--num-frames-from", "csv",
                    "--csv", str(csv_path), "--fps", "25", "--split", "valid"]) == 0
    ann = load_annotations(str(out), "sound_localisation", num_classes=12, splits=["valid"])
    assert {v.video_id: v.num_frames for v in ann.videos} == {"vid_a": 12, "vid_b": 33, "vid_c": 252}
    assert all(v.frame_rate == 25.0 for v in ann.videos)


@pytest.mark.parametrize("kind, folder, truth", [("beats", "beats", BEATS), ("umt", "umt", UMT)])
def test_features_mode_presets(feats, kind, folder, truth):
    out = feats / f"{kind}.json"
    assert ma.main(["--features", str(feats / folder), "--out", str(out), "--num-frames-from",
                    "features", "--feature-kind", kind]) == 0
    durs, _ = _durations(str(out))
    assert set(durs) == set(truth)
    for vid, nf in truth.items():
        assert abs(durs[vid] - nf / FPS) <= 1.0 / FPS + 1e-9, vid


def test_features_mode_rows_per_second_and_h5(tmp_path):
    import h5py
    h5 = tmp_path / "feats.h5"
    with h5py.File(h5, "w") as f:
        f["x1"] = np.zeros((100, 2), np.float32)   # 2 s at 50 rows/s
        f["x2"] = np.zeros((51, 2), np.float32)    # 1.02 s
    out = tmp_path / "ann.json"
    assert ma.main(["--features", str(h5), "--out", str(out), "--num-frames-from", "features",
                    "--rows-per-second", "50"]) == 0
    ann = load_annotations(str(out), "sound_localisation", num_classes=12, splits=["test"])
    assert {v.video_id: v.num_frames for v in ann.videos} == {"x1": 60, "x2": 31}


def test_beats_inverse_is_a_lower_bound():
    nf = np.arange(20, 5000, 7)
    rows = np.array([beats_rows(n) for n in nf])
    est = ma.durations_from_rows(rows, feature_kind="beats")
    true = nf / FPS
    assert np.all(est <= true + 1e-9) and np.all(true - est < 0.16 + 1e-9)
    np.testing.assert_array_equal(ma.durations_from_rows(np.array([75]), rows_per_second=7.5), [10.0])


def test_other_folder_missing_video(feats):
    os.remove(feats / "umt" / "vid_b.pt")
    args = ["--features", str(feats / "beats"), "--features", str(feats / "umt"), "--out",
            str(feats / "a.json"), "--num-frames-from", "features", "--feature-kind", "beats"]
    with pytest.raises(UserError, match="video 'vid_b' has no features in"):
        ma.main(args)
    assert not (feats / "a.json").exists()
    assert ma.main(args + ["--allow-missing"]) == 0
    assert sorted(json.loads((feats / "a.json").read_text())) == ["vid_a", "vid_c"]


def test_csv_mismatch_allow_missing(feats):
    csv_path = feats / "f.csv"
    csv_path.write_text("video_id,num_frames\nvid_a,15\nvid_b,39\nvid_z,10\n")
    args = ["--features", str(feats / "beats"), "--out", str(feats / "a.json"), "--num-frames-from",
            "csv", "--csv", str(csv_path)]
    with pytest.raises(UserError) as err:
        ma.main(args)
    assert "vid_z" in str(err.value) and "vid_c" in str(err.value)
    assert ma.main(args + ["--allow-missing"]) == 0
    assert sorted(json.loads((feats / "a.json").read_text())) == ["vid_a", "vid_b"]


@pytest.mark.parametrize("text, needle", [
    ("vid,frames\nvid_a,1\n", "bad CSV header"),
    ("video_id,num_frames\n", "no videos"),
    ("video_id,num_frames\nvid_a,x\nvid_b,-3\nvid_c,2.5\n", "3 problem(s)"),
    ("video_id,num_frames\nvid_a,15\nvid_a,16\n", "listed twice"),
    ("video_id,duration_s\nvid_a,0.001\n", "under one frame"),
])
def test_bad_csv(tmp_path, text, needle):
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        ma.read_num_frames_csv(str(path), FPS)


@pytest.mark.parametrize("extra, needle", [
    (["--num-frames-from", "csv"], "missing --csv"),
    (["--num-frames-from", "features"], "missing --feature-kind or --rows-per-second"),
    (["--num-frames-from", "features", "--rows-per-second", "0"], "bad --rows-per-second"),
    (["--num-frames-from", "features", "--feature-kind", "beats", "--rows-per-second", "5"],
     "not allowed with"),
    (["--num-frames-from", "features", "--feature-kind", "beats", "--fps", "0"], "bad --fps"),
])
def test_bad_arguments(feats, extra, needle):
    with pytest.raises(UserError, match=needle):
        ma.main(["--features", str(feats / "beats"), "--out", str(feats / "o.json"), *extra])


def test_mixed_extensions(feats):
    torch.save(torch.zeros(2, 2), feats / "beats" / "vid_x.pt")
    with pytest.raises(UserError, match="both .npy and .pt"):
        ma.list_videos(str(feats / "beats"))


def test_cli_errors_exit_2(feats):
    empty = feats / "empty"
    empty.mkdir()
    csv_path = feats / "f.csv"
    csv_path.write_text("video_id,num_frames\nvid_a,15\nvid_b,39\n")   # vid_c missing
    existing = feats / "exists.json"
    existing.write_text("{}")
    cases = [
        (["--features", str(empty), "--out", str(feats / "o1.json"), "--num-frames-from", "features",
          "--feature-kind", "beats"], "no feature files"),
        (["--features", str(feats / "beats"), "--out", str(feats / "o2.json"), "--num-frames-from",
          "csv", "--csv", str(csv_path)], "video 'vid_c' has features"),
        (["--features", str(feats / "beats"), "--out", str(existing), "--num-frames-from", "features",
          "--feature-kind", "beats"], "already exists"),
        (["--features", str(feats / "beats"), "--out", str(feats / "o3.json")], "bad arguments"),
    ]
    for args, needle in cases:
        res = _run(*args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert existing.read_text() == "{}"
    assert not any((feats / n).exists() for n in ("o1.json", "o2.json", "o3.json"))
