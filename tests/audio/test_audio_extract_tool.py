"""tools/extract_audio_features.py and libs/audio/folder.py: outputs, skipping, failures, exit
codes, h5, and features that the Perception Test dataset reads unchanged."""
import copy
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from datagen import write_tiny_config, write_tiny_dataset
from libs.audio.extract import extract_waves
from libs.audio.folder import extract_folder
from libs.common.errors import UserError
from libs.config.loader import load_config
from libs.datasets import PerceptionDataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "extract_audio_features.py")
sys.path.insert(0, os.path.join(REPO, "tools"))
from extract_audio_features import main as tool_main  # noqa: E402


def _tone(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t)[:, None]
    x = x + 0.02 * rng.standard_normal((len(t), channels))
    return x.astype(np.float32) if channels > 1 else x[:, 0].astype(np.float32)


def _dataset(cfg, splits):
    """The evaluation dataset (the config API is being refactored: accept both constructors)."""
    if hasattr(PerceptionDataset, "from_config"):
        return PerceptionDataset.from_config(cfg, splits, is_training=False)
    return PerceptionDataset(cfg, splits, is_training=False)


def _run_tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=180, env=env)


def test_extracted_folder_feeds_the_dataset(tmp_path, tiny_ckpt, tiny_model):
    data = write_tiny_dataset(str(tmp_path / "d"), splits={"train": 3, "valid": 2},
                              num_frames_range=(60, 120))
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    with open(data["annotation_file"], encoding="utf-8") as f:
        ann = json.load(f)
    waves = {}
    for k, (vid, entry) in enumerate(sorted(ann.items())):
        seconds = entry["metadata"]["num_frames"] / entry["metadata"]["frame_rate"]
        rate = (16000, 44100, 48000)[k % 3]                               # resampled to 16 kHz
        x = _tone(seconds, rate, channels=1 + k % 2, seed=k)
        ext = (".wav", ".flac")[k % 2]
        sf.write(audio_dir / f"{vid}{ext}", x, rate)
        waves[vid] = x
    out = tmp_path / "beats"
    assert tool_main(["--checkpoint", tiny_ckpt, "--audio", str(audio_dir), "--out", str(out),
                      "--batch", "2", "--no-progress", "--threads", "1"]) == 0
    assert sorted(os.listdir(out)) == [f"{vid}.npy" for vid in sorted(ann)]
    for vid, entry in ann.items():
        arr = np.load(out / f"{vid}.npy")
        n16 = int(np.ceil(len(waves[vid]) * 16000 / [16000, 44100, 48000][sorted(ann).index(vid) % 3]))
        steps = (1 + (n16 - 400) // 160) // 16
        assert arr.dtype == np.float32 and arr.shape == (8 * steps, 64), vid
    assert tool_main(["--checkpoint", tiny_ckpt, "--audio", str(audio_dir), "--out", str(tmp_path / "b.h5"),
                      "--format", "h5", "--no-progress"]) == 0
    mods = [{"name": "beats", "path": str(out), "ext": ".npy", "dim": 64, "primary": True},
            copy.deepcopy(data["modalities"][1])]
    h5_mods = copy.deepcopy(mods)
    h5_mods[0].update(path=str(tmp_path / "b.h5"), ext=".h5")
    items = []
    for name, m in (("npy", mods), ("h5", h5_mods)):
        cfg = load_config(write_tiny_config(str(tmp_path / f"{name}.yaml"), data,
                                            overrides={"dataset": {"modalities": m}}))
        ds = _dataset(cfg, ["train", "valid"])
        assert len(ds) == 5
        items.append([ds[i] for i in range(len(ds))])
    for a, b in zip(*items):
        assert a["feats"].shape == (64 + 6, 96) and torch.isfinite(a["feats"]).all()
        assert (a["feats"] - b["feats"]).abs().max() < 1e-5     # batch 2 (npy) vs batch 1 (h5)


def test_folder_skips_failures_existing_and_overwrite(tmp_path, tiny_model, golden):
    src = tmp_path / "in"
    src.mkdir()
    good = golden["items"]["noise"]["wave"].numpy()
    sf.write(src / "good.wav", good, 16000, subtype="FLOAT")
    sf.write(src / "stereo48k.wav", _tone(1.0, 48000, 2, seed=3), 48000)
    sf.write(src / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(src / "short.flac", _tone(0.17), 16000)                      # 2720 samples < 2800
    (src / "broken.ogg").write_bytes(b"OggS but not really")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    s = extract_folder(tiny_model, str(src), str(out), progress=False)
    assert sorted(s.extracted) == ["good", "stereo48k"] and s.ignored == 1 and s.skipped == []
    reasons = dict((os.path.basename(p), r) for p, r in s.failed)
    assert sorted(reasons) == ["broken.ogg", "short.flac", "silent.wav"]
    assert reasons["silent.wav"].startswith("silent") and "2720 samples" in reasons["short.flac"]
    assert np.abs(np.load(out / "good.npy") - golden["items"]["noise"]["features"].numpy()).max() < 1e-4
    assert abs(s.seconds - (len(good) / 16000 + 1.0)) < 1e-6
    # existing outputs are skipped (not rewritten) unless overwrite
    np.save(out / "good.npy", np.zeros((1, 64), np.float32))
    s2 = extract_folder(tiny_model, str(src), str(out), progress=False)
    assert s2.skipped == ["good", "stereo48k"] and s2.extracted == [] and len(s2.failed) == 3
    assert np.load(out / "good.npy").shape == (1, 64)
    s3 = extract_folder(tiny_model, str(src), str(out), overwrite=True, progress=False)
    assert sorted(s3.extracted) == ["good", "stereo48k"] and np.load(out / "good.npy").shape == (120, 64)
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    # h5: existing datasets are kept and skipped, new ones appended, the file replaced atomically
    h5 = tmp_path / "f.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("good", data=np.ones((2, 64), np.float32))
        f.create_dataset("other", data=np.ones((3, 64), np.float32))
    s4 = extract_folder(tiny_model, str(src), str(h5), fmt="h5", progress=False)
    assert s4.skipped == ["good"] and s4.extracted == ["stereo48k"]
    with h5py.File(h5, "r") as f:
        assert sorted(f) == ["good", "other", "stereo48k"] and f["good"].shape == (2, 64)
        assert np.array_equal(f["stereo48k"][()], np.load(out / "stereo48k.npy"))
    extract_folder(tiny_model, str(src), str(h5), fmt="h5", overwrite=True, progress=False)
    with h5py.File(h5, "r") as f:
        assert f["good"].shape == (120, 64) and f["other"].shape == (3, 64)
    assert sorted(os.listdir(tmp_path)) == ["f.h5", "in", "out"]


def test_folder_user_errors(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    with pytest.raises(UserError, match="no audio or video files"):
        extract_folder(tiny_model, str(src), str(tmp_path / "o"), progress=False)
    sf.write(src / "a.wav", _tone(1.0), 16000)
    sf.write(src / "a.flac", _tone(1.0), 16000)
    with pytest.raises(UserError, match=r"several files per video id .*'a' \(a.flac, a.wav\)"):
        extract_folder(tiny_model, str(src), str(tmp_path / "o"), progress=False)
    os.remove(src / "a.flac")
    with pytest.raises(UserError, match="does not end in .h5"):
        extract_folder(tiny_model, str(src), str(tmp_path / "o"), fmt="h5", progress=False)
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        extract_folder(tiny_model, str(src), str(tmp_path / "x.h5"), fmt="h5", progress=False)
    with pytest.raises(UserError, match="audio folder not found"):
        extract_folder(tiny_model, str(tmp_path / "nope"), str(tmp_path / "o"), progress=False)
    with pytest.raises(UserError, match="--chunk-overlap"):
        extract_folder(tiny_model, str(src), str(tmp_path / "o"), chunk_seconds=2, overlap_seconds=3,
                       progress=False)
    assert (tmp_path / "x.h5").read_text() == "not hdf5"


def test_cli_exit_codes(tmp_path, tiny_ckpt):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "ok.wav", _tone(2.0), 16000)
    sf.write(src / "zero.wav", np.zeros(8000, np.float32), 16000)
    res = _run_tool("--checkpoint", tiny_ckpt, "--audio", str(src), "--out", str(tmp_path / "o"),
                    "--chunk-seconds", "1", "--chunk-overlap", "0.3")
    assert res.returncode == 1, res.stderr
    assert "extracted 1 file(s)" in res.stdout and "failed 1" in res.stdout
    assert "zero.wav (skipped): silent" in res.stderr and "BEATs features" in res.stderr   # log + progress bar
    chunked = np.load(tmp_path / "o" / "ok.npy")
    assert chunked.shape == (8 * 12, 64)
    bad = _run_tool("--checkpoint", str(src / "ok.wav"), "--audio", str(src), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot load checkpoint")
    assert bad.stderr.strip().count("\n") == 0
    with pytest.raises(UserError, match="--batch"):
        tool_main(["--checkpoint", tiny_ckpt, "--audio", str(src), "--out", str(tmp_path / "o"),
                   "--batch", "0"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            tool_main(["--checkpoint", tiny_ckpt, "--audio", str(src), "--out", str(tmp_path / "o"),
                       "--device", "cuda"])


def test_chunked_tool_output_matches_library(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    wave = _tone(5.0, seed=2)
    sf.write(src / "long.wav", wave, 16000, subtype="FLOAT")
    extract_folder(tiny_model, str(src), str(tmp_path / "o"), chunk_seconds=2.0, overlap_seconds=0.5,
                   progress=False)
    lib = extract_waves(tiny_model, [wave], chunk_seconds=2.0, overlap_seconds=0.5)[0]
    assert np.array_equal(np.load(tmp_path / "o" / "long.npy"), lib)
