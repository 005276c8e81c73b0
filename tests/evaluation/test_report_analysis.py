"""Tests of libs/evaluation/report/analysis.py: PR curves, per-video AP, sensitivity bins and
the choice of timeline videos, against hand values and direct metric calls."""
from __future__ import annotations

import numpy as np
import pytest

from libs.evaluation.metrics import DEFAULT_TIOU_THRESHOLDS, evaluate_map, pr_envelope
from libs.evaluation.events import GroundTruth, Predictions
from libs.evaluation.report.analysis import (EVENTS_PER_VIDEO_BINS, LENGTH_BINS_S, _bin_of,
                                             choose_videos, evaluation_thresholds, headline,
                                             per_video_ap, pr_curves, sensitivity)
from report_helpers import gt_of, pred_of


def random_case(seed, n_videos=6, n_classes=3):
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(n_videos):
        for _ in range(int(rng.integers(1, 6))):
            s = float(rng.uniform(0, 20))
            rows.append((f"v{v}", s, s + float(rng.choice([0.3, 0.8, 1.5, 3.0, 6.0])),
                         int(rng.integers(n_classes))))
    preds = []
    for v, s, e, c in rows:
        for _ in range(int(rng.integers(0, 4))):
            d = rng.normal(0, 0.3, 2)
            preds.append((v, s + d[0], max(s + d[0] + 0.1, e + d[1]),
                          c if rng.random() < 0.7 else int(rng.integers(n_classes + 1)),
                          float(rng.random())))
    preds += [(f"v{rng.integers(n_videos)}", s, s + 1.0, int(rng.integers(n_classes)), float(rng.random()))
              for s in rng.uniform(0, 20, 15)]
    return gt_of(rows), pred_of(preds)


def test_pr_envelope_hand_values():
    # prec [1, .5, 2/3], rec [.5, .5, 1]: recall changes at .5 and 1, envelope 1 and 2/3.
    r, p = pr_envelope(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0]))
    np.testing.assert_allclose(r, [0.5, 1.0])
    np.testing.assert_allclose(p, [1.0, 2 / 3])
    # Recall stuck below 1: the (1, 0) point of the interpolation adds nothing.
    r, p = pr_envelope(np.array([0.0, 0.5]), np.array([0.0, 0.25]))
    np.testing.assert_allclose(r, [0.25])
    np.testing.assert_allclose(p, [0.5])


@pytest.mark.parametrize("pr_tiou", [0.5, 0.3, 0.7])
def test_pr_curves_integrate_to_the_metric_ap(pr_tiou):
    gt, preds = random_case(0)
    result = evaluate_map(gt, preds, evaluation_thresholds(pr_tiou, 0.5))
    curves = pr_curves(preds, result, pr_tiou)
    t = result.matches.threshold_index(pr_tiou)
    assert list(curves) == [str(c) for c in result.class_ids]
    for j, cid in enumerate(result.class_ids):
        r, p = np.array(curves[str(cid)]["recall"]), np.array(curves[str(cid)]["precision"])
        assert np.all(np.diff(r) > 0) and np.all(np.diff(p) <= 1e-15)   # increasing, envelope
        ap = float(np.sum(np.diff(np.r_[0.0, r]) * p))
        assert ap == pytest.approx(result.ap[t, j], abs=1e-12)


def test_headline_equals_challenge_evaluation():
    gt, preds = random_case(1)
    fine = evaluate_map(gt, preds, evaluation_thresholds(0.55, 0.5))
    plain = evaluate_map(gt, preds)
    h = headline(fine)
    assert h["average_map"] == plain.average_map                   # bit-identical
    assert list(h["map_per_tiou"].values()) == [float(x) for x in plain.map_per_tiou]


def test_per_video_ap_equals_metric_on_each_video():
    gt, preds = random_case(2)
    got = per_video_ap(gt, preds)
    assert set(got) == set(gt.video_ids)
    for v, ap in got.items():
        g, p = gt.video_ids == v, preds.video_ids == v
        sub_gt = GroundTruth(gt.video_ids[g], gt.t_start[g], gt.t_end[g], gt.labels[g])
        sub_p = Predictions(preds.video_ids[p], preds.t_start[p], preds.t_end[p], preds.labels[p],
                            preds.scores[p])
        assert ap == pytest.approx(evaluate_map(sub_gt, sub_p).average_map, abs=1e-12), v


def test_bins_edges():
    np.testing.assert_array_equal(
        _bin_of(np.array([0.2, 0.5, 0.51, 1.0, 2.5, 4.0, 4.01, 100.0]), LENGTH_BINS_S, right=True),
        [0, 0, 1, 1, 3, 3, 4, 4])
    np.testing.assert_array_equal(
        _bin_of(np.array([1, 2, 3, 5, 6, 10, 11, 20, 21, 99.0]), EVENTS_PER_VIDEO_BINS, right=False),
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


def test_sensitivity_hand_case():
    # Video a: a 0.3 s event (XS) found, a 1.5 s event (M) missed; video b (1 event, XS bin of
    # events per video): a 3 s event (L) found, plus a 3 s false positive of the same class.
    gt = gt_of([("a", 0, 0.3, 0), ("a", 5, 6.5, 0), ("b", 0, 3, 1)])
    preds = pred_of([("a", 0, 0.3, 0, 0.9), ("b", 0, 3, 1, 0.8), ("b", 10, 13, 1, 0.9)])
    result = evaluate_map(gt, preds, evaluation_thresholds(0.5, 0.5))
    s = sensitivity(gt, preds, result, 0.5)
    length = {b["name"]: b for b in s["length"]["bins"]}
    assert [length[n]["num_events"] for n in ("XS", "S", "M", "L", "XL")] == [1, 0, 1, 1, 0]
    assert length["XS"]["average_map"] == 1.0 and length["XS"]["false_negative_rate"] == 0.0
    assert length["M"]["average_map"] == 0.0 and length["M"]["false_negative_rate"] == 1.0
    assert length["S"]["average_map"] is None
    # L: the 3 s FP (higher score) comes first: prec [0, .5], rec [0, 1] -> AP .5.
    assert length["L"]["average_map"] == pytest.approx(0.5)
    per_video = {b["name"]: b for b in s["events_per_video"]["bins"]}
    assert per_video["XS"]["num_videos"] == 2 and per_video["XS"]["num_events"] == 3
    assert per_video["XS"]["average_map"] == pytest.approx(evaluate_map(gt, preds).average_map)
    assert s["false_negatives"] == {"num_events": 3, "missed": 1, "rate": pytest.approx(1 / 3)}


def test_choose_videos():
    ids = [f"v{i}" for i in range(10)]
    ap = {f"v{i}": a for i, a in enumerate([0.9, 0.1, 0.5, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4])}
    del ap["v9"]                                          # a video without events
    picks = choose_videos(ids, ap, None, 3, seed=0)
    assert [p["video_id"] for p in picks[:3]] == ["v1", "v3", "v7"]   # ties: split order
    assert all(p["reason"] == "lowest AP" for p in picks[:3])
    sampled = [p["video_id"] for p in picks[3:]]
    assert len(sampled) == 3 and not set(sampled) & {"v1", "v3", "v7"}
    assert picks == choose_videos(ids, ap, None, 3, seed=0)          # seeded
    assert choose_videos(ids, ap, ["v5", "v0"], 3) == [{"video_id": "v5", "reason": "chosen"},
                                                       {"video_id": "v0", "reason": "chosen"}]
    assert choose_videos(ids, ap, None, 0) == []
    assert len(choose_videos(ids[:2], ap, None, 5)) == 2
    assert evaluation_thresholds(0.5, 0.5).tolist()[:3] == [0.05, 0.1, 0.15]
    assert set(DEFAULT_TIOU_THRESHOLDS) <= set(evaluation_thresholds(0.33, 0.5).tolist())
