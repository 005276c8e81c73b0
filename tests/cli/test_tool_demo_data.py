"""The synthetic demo dataset (tools/make_demo_data.py): formats, shapes, determinism, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tools.demo_signal as sig
import tools.make_demo_data as mdd

ROOT = Path(__file__).resolve().parents[2]

TINY = dict(seed=0, num_train=3, num_valid=2, num_test=2, min_duration=4.0, max_duration=6.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "a"
    res = mdd.generate_demo_data(out, **TINY)
    assert not res["up_to_date"] and res["num_videos"] == 7
    return out


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(tiny: Path) -> dict:
    return json.loads((tiny / "annotations.json").read_text())


def test_deterministic(tiny, tmp_path):
    mdd.generate_demo_data(tmp_path / "b", **TINY)
    a, b = _files(tiny), _files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 2 + 3 * 7
    assert all(a[k] == b[k] for k in a)
    mdd.generate_demo_data(tmp_path / "c", **dict(TINY, seed=1))
    assert (tmp_path / "c" / "annotations.json").read_bytes() != a["annotations.json"]


def test_annotation_format(tiny):
    ann = _load(tiny)
    assert list(ann) == [f"video_{i:05d}" for i in range(7)]
    splits = [v["metadata"]["split"] for v in ann.values()]
    assert splits == ["train"] * 3 + ["valid"] * 2 + ["test"] * 2
    for vid, v in ann.items():
        md = v["metadata"]
        assert md["video_id"] == vid and md["frame_rate"] == 30.0 and len(md["resolution"]) == 2
        assert isinstance(md["num_frames"], int) and 4 * 30 <= md["num_frames"] <= 6 * 30
        assert "mc_question" in v
        if md["split"] == "test":
            continue
        end_us = md["num_frames"] / md["frame_rate"] * 1e6
        for task, k in (("sound_localisation", 12), ("action_localisation", 16)):
            assert len(v[task]) >= 2
            for ev in v[task]:
                s, e = ev["timestamps"]
                assert isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= end_us
                assert isinstance(ev["label_id"], int) and 0 <= ev["label_id"] < k
                names = sig.SOUND_CLASSES if task == "sound_localisation" else sig.ACTION_CLASSES
                assert ev["label"] == names[ev["label_id"]]
                assert len(ev["frame_ids"]) == 2 and ev["parent_objects"] == []
                assert ("is_visible" in ev) == (task == "sound_localisation")
    test = [v for v in ann.values() if v["metadata"]["split"] == "test"]
    assert "sound_localisation" not in test[0] and "action_localisation" not in test[0]
    assert all(t.get("sound_localisation") == [] and t.get("action_localisation") == []
               for t in test[1:])


def test_feature_shapes(tiny):
    for vid, v in _load(tiny).items():
        nf = v["metadata"]["num_frames"]
        d = nf / 30.0
        beats = np.load(tiny / "features" / "beats" / f"{vid}.npy")
        n_a = 8 * int(np.floor((100 * d - 2) / 16 + 1e-9))
        assert beats.dtype == np.float32 and beats.shape == (n_a, 768) == (sig.beats_rows(nf), 768)
        assert abs(beats.shape[0] / d - 50) < 4
        for fam in ("umt", "videomae"):
            x = torch.load(tiny / "features" / fam / f"{vid}.pt")
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
            assert x.shape == (max(1, int(np.floor(d * 7.5 + 1e-9))), 1024)
            assert torch.isfinite(x).all()


def test_row_formulas():
    for nf in range(30, 1000):
        d = nf / 30.0
        assert sig.beats_rows(nf) == 8 * int(np.floor((100 * d - 2) / 16 + 1e-9))
        assert sig.video_rows(nf) == max(1, int(np.floor(7.5 * d + 1e-9)))


def test_event_sampler_overlaps_and_pairs():
    """Default-size statistics: 20-30% of videos have an overlap of different classes."""
    rng = np.random.default_rng(0)
    n, p = 400, sig.PARAMS
    overl = {"sound": 0, "action": 0}
    same_nearby = 0
    for _ in range(n):
        d = rng.uniform(8, 16)
        for kind, k, count, length in (("sound", 12, p.sound_count, p.sound_length_s),
                                       ("action", 16, p.action_count, p.action_length_s)):
            evs = sig.sample_events(rng, d, k, count, length)
            assert all(0 <= e.start < e.end <= d + 1e-9 and 0 <= e.label < k for e in evs)
            assert 2 <= len(evs) <= count[1]
            overl[kind] += sig.has_overlap(evs)
            same_nearby += any(a.label == b.label and 0 < b.start - a.end < 1.0
                               for a, b in zip(evs, evs[1:]))
    for kind, c in overl.items():
        assert 0.15 < c / n < 0.35, (kind, c / n)
    assert same_nearby > 0.05 * 2 * n


def test_default_annotation_has_overlaps():
    """The default-size dataset's events (drawn before the features, so no files are needed):
    both task lists have overlaps of different classes in ~20-30% of the videos."""
    plans = [sig.plan_video(sig.video_rng(0, i), 8.0, 16.0) for i in range(64 + 24)]
    for task in ("sounds", "actions"):
        frac = np.mean([sig.has_overlap(getattr(p, task)) for p in plans])
        assert 0.1 <= frac <= 0.4, (task, frac)
    assert all(2 <= len(p.sounds) <= 6 and 2 <= len(p.actions) <= 5 for p in plans)
    assert all(8 * 30 <= p.num_frames <= 16 * 30 for p in plans)


def test_up_to_date_and_overwrite(tiny, tmp_path, capsys):
    res = mdd.generate_demo_data(tiny, **TINY)
    assert res["up_to_date"]
    argv = ["--out", str(tiny), "--seed", "0", "--num-train", "3", "--num-valid", "2",
            "--num-test", "2", "--min-duration", "4", "--max-duration", "6"]
    with pytest.raises(SystemExit) as exc:
        mdd.run_cli(mdd.main, argv)
    assert exc.value.code == 0 and "demo data up to date" in capsys.readouterr().out

    out = tmp_path / "d"
    mdd.generate_demo_data(out, **TINY)
    before = _files(out)
    with pytest.raises(SystemExit) as exc:  # other arguments, no --overwrite: refused
        mdd.run_cli(mdd.main, argv[2:] + ["--out", str(out), "--seed", "5"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "--overwrite" in err and _files(out) == before

    (out / "features" / "umt" / "video_00000.pt").write_bytes(b"corrupt")  # no longer up to date
    with pytest.raises(SystemExit) as exc:
        mdd.run_cli(mdd.main, argv[2:] + ["--out", str(out)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        mdd.run_cli(mdd.main, argv[2:] + ["--out", str(out), "--overwrite"])
    assert exc.value.code == 0
    assert _files(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_bad_arguments(tmp_path):
    with pytest.raises(mdd.UserError):
        mdd.generate_demo_data(tmp_path / "x", min_duration=5, max_duration=4)
    with pytest.raises(mdd.UserError):
        mdd.generate_demo_data(tmp_path / "x", num_train=-1)


def _inside_single_events(ev: dict, events: list, t: np.ndarray) -> np.ndarray:
    """Mask of times well inside ``ev`` and away from every other event of the list."""
    s, e = (x * 1e-6 for x in ev["timestamps"])
    inside = (t > s + 0.3) & (t < e - 0.3)
    for o in events:
        if o is not ev:
            os_, oe = (x * 1e-6 for x in o["timestamps"])
            inside &= ~((t > os_ - 0.3) & (t < oe + 0.3))
    return inside


def test_sounds_separable_from_audio_not_video(tiny):
    """A nearest-prototype classifier on single BEATs rows inside sound events beats chance
    (1/12) clearly; UMT rows (where visible sounds leave only a weak hint) do much worse."""
    protos = sig.make_prototypes(0)
    hits = {"audio": [], "video": []}
    for vid, v in _load(tiny).items():
        if v["metadata"]["split"] == "test":
            continue
        beats = np.load(tiny / "features" / "beats" / f"{vid}.npy")
        beats = beats - beats.mean(0, keepdims=True)          # remove offsets and dataset mean
        p = beats.shape[0] // 8
        per_patch = beats.reshape(p, 8, 768)
        t_a = (np.arange(p) + 0.5) * 0.16
        umt = torch.load(tiny / "features" / "umt" / f"{vid}.pt").numpy()
        umt = umt - umt.mean(0, keepdims=True)
        t_v = (np.arange(len(umt)) + 0.5) / 7.5
        events = v["sound_localisation"]
        for ev in events:
            inside = _inside_single_events(ev, events, t_a)
            for f in range(8):  # row of frequency token f vs each class's token-f pattern
                pred = (per_patch[inside, f] @ protos.sound_audio[:, f].T).argmax(1)
                hits["audio"] += list(pred == ev["label_id"])
            pred = (umt[_inside_single_events(ev, events, t_v)] @ protos.sound_umt.T).argmax(1)
            hits["video"] += list(pred == ev["label_id"])
    assert len(hits["audio"]) > 200 and len(hits["video"]) > 20
    acc = {k: float(np.mean(h)) for k, h in hits.items()}
    assert acc["audio"] > 0.6 and acc["audio"] > acc["video"] + 0.3, acc
