"""Tests of the report's outputs (libs/evaluation/report): report.json numbers, valid PNGs of
sensible size, an index.html whose links resolve, the overwrite rule, --compare, the figure
array for TensorBoard, and tools/make_report.py on a submission and on raw candidates."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from libs.common.errors import UserError
from libs.datasets.annotations import VideoRecord
from libs.evaluation.metrics import evaluate_map
from libs.evaluation.events import ground_truth_from_records, predictions_from_detections
from libs.evaluation.report import (ERROR_TYPES, build_report, compare_reports, figure_to_array,
                                    summary_figures, timeline_figure, write_report)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = {0: "speech", 1: "clapping", 2: "knocking", 3: "whispering"}
ROOT = Path(__file__).resolve().parents[2]


def demo_like(seed=0, n_videos=8, jitter=0.4, wrong=0.2):
    """Demo-like split: 8-16 s videos, 1-6 events of 0.3-5 s in 4 classes; predictions are
    jittered events (some with the wrong class) plus random false positives, soft scores."""
    rng = np.random.default_rng(seed)
    videos, dets = [], []
    for i in range(n_videos):
        dur = float(rng.uniform(8, 16))
        n = int(rng.integers(1, 7))
        length = rng.uniform(0.3, 5.0, n)
        start = rng.uniform(0, dur - length)
        segs = np.stack([start, start + length], 1)
        labels = rng.integers(0, 4, n)
        vid = f"vid_{i:03d}"
        videos.append(VideoRecord(vid, "valid", int(dur * 30), 30.0, dur, segs, labels))
        src = rng.integers(0, n, 3 * n)
        p = segs[src] + rng.normal(0, jitter, (3 * n, 2))
        p_lab = np.where(rng.random(3 * n) < wrong, rng.integers(0, 4, 3 * n), labels[src])
        fp_s = rng.uniform(0, dur - 1, 10)
        p = np.concatenate([p, np.stack([fp_s, fp_s + rng.uniform(0.3, 3, 10)], 1)])
        p = np.sort(np.clip(p, 0, dur), axis=1)
        scores = np.concatenate([rng.uniform(0.3, 0.9, 3 * n), rng.uniform(0.01, 0.5, 10)])
        dets.append({"video_id": vid, "segments": p, "scores": scores,
                     "labels": np.concatenate([p_lab, rng.integers(0, 4, 10)])})
    return videos, dets


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href")]


def links_of(html_path):
    parser = _Links()
    parser.feed(Path(html_path).read_text(encoding="utf-8"))
    return parser.links


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "demo"
    videos, dets = demo_like()
    report = write_report(str(out), videos, dets, NAMES, "sound_localisation", num_videos=2,
                          meta={"split": "valid"})
    return out, report, videos, dets


def test_report_numbers_are_the_metric(report_dir):
    out, report, videos, dets = report_dir
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    gt, preds = ground_truth_from_records(videos), predictions_from_detections(dets)
    plain = evaluate_map(gt, preds)
    assert report["average_map"] == plain.average_map
    assert list(report["map_per_tiou"].values()) == [float(x) for x in plain.map_per_tiou]
    assert 0.05 < report["average_map"] < 0.95                      # a case with errors
    assert set(report["per_class_ap"]) == {str(c) for c in plain.class_ids}
    for j, c in enumerate(plain.class_ids):
        entry = report["per_class_ap"][str(c)]
        assert entry["average_ap"] == pytest.approx(plain.ap[:, j].mean(), abs=1e-12)
        assert entry["num_events"] == plain.num_gt_per_class[j] and entry["name"] == NAMES[int(c)]
    assert set(report["errors"]) == set(report["error_map_gain"]) == set(ERROR_TYPES)
    ea = report["error_analysis"]
    assert sum(report["errors"].values()) == ea["false_positives"] == ea["window_size"] - ea["true_positives"]
    assert sum(report["errors"].values()) > 0
    assert report["map_vs_tiou"]["0.50"] == report["map_per_tiou"]["0.50"]
    assert len(report["map_vs_tiou"]) == 19
    assert [t["reason"] for t in report["timelines"]] == ["lowest AP"] * 2 + ["sampled"] * 2
    worst = min(report["video_ap"].values())
    assert report["timelines"][0]["video_ap"] == worst


def test_figures_are_pngs_of_sensible_size(report_dir):
    out, report, _, _ = report_dir
    pngs = sorted((out / "img").glob("*.png"))
    assert len(pngs) == 5 + len(report["timelines"])
    for p in pngs:
        w, h = png_size(p)
        assert 400 <= w <= 2000 and 200 <= h <= 3000, (p.name, w, h)
        assert p.stat().st_size < 400_000
    assert not list(out.rglob("*.tmp"))


def test_html_links_resolve(report_dir):
    out, report, _, _ = report_dir
    links = links_of(out / "index.html")
    assert "report.json" in links
    srcs = [link for link in links if link.endswith(".png")]
    assert len(set(srcs)) == len(list((out / "img").glob("*.png")))
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link
        assert (out / link).is_file(), link
    text = (out / "index.html").read_text()
    assert f"<b>{report['average_map'] * 100:.2f}</b>" in text       # the mAP table on top
    assert text.index("tIoU 0.10") < text.index("<img")


def test_existing_report_needs_overwrite(tmp_path):
    videos, dets = demo_like(seed=1, n_videos=3)
    out = tmp_path / "rep"
    write_report(str(out), videos, dets, NAMES, "sound_localisation", num_videos=1)
    stale = sorted((out / "img").glob("timeline_*.png"))
    before = (out / "report.json").read_bytes()
    with pytest.raises(UserError, match=r"report folder not empty .*--overwrite"):
        write_report(str(out), videos, dets, NAMES, "sound_localisation", num_videos=1)
    assert (out / "report.json").read_bytes() == before                # nothing touched
    (out / "notes.txt").write_text("mine")
    write_report(str(out), videos, dets, NAMES, "sound_localisation", videos_to_show=["vid_002"],
                 overwrite=True)
    assert [p.name for p in sorted((out / "img").glob("timeline_*.png"))] == ["timeline_00_vid_002.png"]
    assert stale and (out / "notes.txt").read_text() == "mine"         # only report files go


def test_bad_inputs_are_user_errors(tmp_path):
    videos, dets = demo_like(seed=2, n_videos=3)
    with pytest.raises(UserError, match="unknown video id.*nope"):
        write_report(str(tmp_path / "a"), videos, dets, NAMES, "t", videos_to_show=["nope"])
    bad = [dict(d) for d in dets]
    bad[1]["segments"] = bad[1]["segments"].copy()
    bad[1]["segments"][0] = [5.0, 1.0]                                # end < start
    with pytest.raises(UserError, match="vid_001"):
        write_report(str(tmp_path / "b"), videos, bad, NAMES, "t")
    empty = [VideoRecord("x", "test", 30, 30.0, 1.0, np.zeros((0, 2)), np.zeros(0, np.int64))]
    with pytest.raises(UserError, match="no ground-truth events"):
        write_report(str(tmp_path / "c"), empty, [], NAMES, "t")
    with pytest.raises(UserError, match="--pr-tiou"):
        write_report(str(tmp_path / "d"), videos, dets, NAMES, "t", pr_tiou=1.5)
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_timeline_figure_and_array():
    videos, dets = demo_like(seed=3, n_videos=2)
    fig = timeline_figure(videos[0], dets[0], NAMES)
    arr = figure_to_array(fig)
    w, h = fig.get_size_inches() * fig.dpi
    assert arr.dtype == np.uint8 and arr.shape == (round(h), round(w), 3)
    assert arr.std() > 10                                             # something is drawn
    none = VideoRecord("e", "valid", 300, 30.0, 10.0, np.zeros((0, 2)), np.zeros(0, np.int64))
    assert figure_to_array(timeline_figure(none, dets[1], NAMES)).shape[2] == 3


def test_build_report_for_tensorboard(report_dir):
    _, report, videos, dets = report_dir
    built = build_report(videos, dets, NAMES, "sound_localisation", meta={"split": "valid"})
    assert built == {k: v for k, v in report.items() if k != "timelines"}
    figs = summary_figures(built)
    assert list(figs) == ["map_vs_tiou", "per_class_ap", "pr_curves", "errors", "sensitivity"]
    for fig in figs.values():
        arr = figure_to_array(fig)
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[0] >= 200


def test_compare_reports(tmp_path, report_dir):
    out_a, rep_a, videos, _ = report_dir
    _, dets_b = demo_like(seed=0, jitter=0.1, wrong=0.05)               # a better model
    rep_b = write_report(str(tmp_path / "better"), videos, dets_b, NAMES, "sound_localisation",
                         num_videos=0)
    comp = compare_reports(str(out_a / "report.json"), str(tmp_path / "better"), str(tmp_path / "cmp"))
    assert comp["names"] == ["demo", "better"]
    assert comp["average_map"] == [rep_a["average_map"], rep_b["average_map"]]
    assert rep_b["average_map"] > rep_a["average_map"]
    for cid, entry in comp["per_class_ap"].items():
        assert entry["average_ap"] == [rep_a["per_class_ap"][cid]["average_ap"],
                                       rep_b["per_class_ap"][cid]["average_ap"]]
    assert comp["errors"] == {e: [rep_a["errors"][e], rep_b["errors"][e]] for e in ERROR_TYPES}
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == comp
    for link in links_of(tmp_path / "cmp" / "index.html"):
        assert (tmp_path / "cmp" / link).is_file(), link
    for p in (tmp_path / "cmp" / "img").glob("*.png"):
        assert png_size(p)[0] >= 400
    other = dict(json.loads((out_a / "report.json").read_text()), task="action_localisation")
    (tmp_path / "tal.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match="different tasks"):
        compare_reports(str(out_a), str(tmp_path / "tal.json"), str(tmp_path / "cmp2"))
    with pytest.raises(UserError, match="report not found"):
        compare_reports(str(tmp_path / "nothing"), str(out_a), str(tmp_path / "cmp3"))


# ---------------------------------------------------------------- tools/make_report.py

def _annotations(path, videos, names):
    data = {}
    for v in videos:
        data[v.video_id] = {
            "metadata": {"video_id": v.video_id, "split": v.split, "num_frames": v.num_frames,
                         "frame_rate": v.frame_rate},
            "sound_localisation": [
                {"id": k, "label": names[int(c)], "label_id": int(c),
                 "timestamps": [int(round(s * 1e6)), int(round(e * 1e6))]}
                for k, ((s, e), c) in enumerate(zip(v.segments, v.labels))]}
    Path(path).write_text(json.dumps(data))


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    from libs.evaluation.raw_candidates import save_raw_candidates, write_raw_meta
    from libs.evaluation.submission import detections_to_submission
    root = tmp_path_factory.mktemp("cli")
    videos, dets = demo_like(seed=4, n_videos=4)
    videos = [VideoRecord(v.video_id, v.split, v.num_frames, v.frame_rate, v.num_frames / 30.0,
                          v.segments.clip(0, v.num_frames / 30.0), v.labels) for v in videos]
    _annotations(root / "ann.json", videos, NAMES)
    sub = detections_to_submission(dets, "sound_localisation", [v.video_id for v in videos], 500)
    (root / "sub.json").write_text(json.dumps(sub))
    raw = root / "raw"
    for v, d in zip(videos, dets):
        save_raw_candidates(str(raw), v.video_id, d["segments"], d["scores"], d["labels"], v.duration)
    write_raw_meta(str(raw), {"task": "sound_localisation", "split": "valid", "num_classes": 4})
    return root


def _tool(argv):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_report
    finally:
        sys.path.pop(0)
    return make_report.main(argv)


def test_cli_submission_and_raw(cli_inputs, capsys):
    root = cli_inputs
    common = ["--task", "sound_localisation", "--split", "valid", "--num-videos", "1"]
    assert _tool([str(root / "ann.json"), str(root / "sub.json"), *common, "--out", str(root / "r1")]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((root / "r1" / "report.json").read_text())
    assert f"Average mAP: {rep['average_map'] * 100:.2f} (%)" in printed
    assert rep["per_class_ap"]["0"]["name"] == "speech" and rep["meta"]["split"] == "valid"
    assert _tool([str(root / "ann.json"), str(root / "raw"), *common, "--out", str(root / "r2"),
                  "--fp-window", "5"]) == 0
    raw_rep = json.loads((root / "r2" / "report.json").read_text())
    assert "raw candidates + NMS" in raw_rep["meta"]["predictions"]
    assert raw_rep["error_analysis"]["fp_window"] == 5
    assert 0 < raw_rep["num_predictions"] <= rep["num_predictions"]   # soft-NMS drops some
    assert _tool(["--compare", str(root / "r1"), str(root / "r2"), "--out", str(root / "cmp"),
                  "--names", "sub", "raw"]) == 0
    assert "average mAP: sub" in capsys.readouterr().out
    with pytest.raises(UserError, match="raw candidates of split 'valid'"):
        _tool([str(root / "ann.json"), str(root / "raw"), "--task", "sound_localisation",
               "--split", "train", "--out", str(root / "r3")])


def test_cli_refuses_existing_report_in_one_line(cli_inputs):
    root = cli_inputs
    out = root / "exists"
    (out / "img").mkdir(parents=True)
    (out / "index.html").write_text("old")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_report.py"), str(root / "ann.json"),
         str(root / "sub.json"), "--task", "sound_localisation", "--split", "valid", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: report folder not empty ({out}, 1 report files): pass --overwrite to replace "
        "them or choose another folder"]
    assert (out / "index.html").read_text() == "old"
