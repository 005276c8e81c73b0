"""Tests of libs/evaluation/metrics.py: hand-computed APs and a plain-Python reference on random cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from libs.common.errors import UserError
from libs.datasets.annotations import VideoRecord
from libs.evaluation.metrics import evaluate_map, interpolated_ap
from libs.evaluation.events import (GroundTruth, Predictions, ground_truth_from_records,
                                    predictions_from_detections)


def gt_of(rows):
    """rows: (video, start, end, label)."""
    v, s, e, l = zip(*rows) if rows else ((), (), (), ())
    return GroundTruth(np.array(v, dtype=str), np.array(s, float), np.array(e, float), np.array(l, int))


def pred_of(rows):
    """rows: (video, start, end, label, score)."""
    v, s, e, l, c = zip(*rows) if rows else ((), (), (), (), ())
    return Predictions(np.array(v, dtype=str), np.array(s, float), np.array(e, float),
                       np.array(l, int), np.array(c, float))


def test_perfect_prediction_gives_ap_one():
    gt = gt_of([("a", 0, 10, 0), ("a", 20, 30, 1), ("b", 5, 6, 1)])
    pr = pred_of([("a", 0, 10, 0, 0.9), ("a", 20, 30, 1, 0.8), ("b", 5, 6, 1, 0.7)])
    r = evaluate_map(gt, pr)
    assert r.ap.shape == (5, 2)
    np.testing.assert_array_equal(r.ap, 1.0)
    assert r.average_map == 1.0
    np.testing.assert_array_equal(r.class_ids, [0, 1])
    np.testing.assert_array_equal(r.num_gt_per_class, [1, 2])
    np.testing.assert_array_equal(r.recall, 1.0)


def test_tied_scores_keep_input_order():
    gt = gt_of([("a", 0, 10, 0)])
    tp = ("a", 0, 10, 0, 0.5)
    fp = ("a", 50, 60, 0, 0.5)
    # TP first: tp=[1,0], prec=[1, .5], rec=[1, 1] -> AP = 1 * 1 = 1.
    assert evaluate_map(gt, pred_of([tp, fp])).average_map == 1.0
    # FP first: tp=[0,1], prec=[0, .5], rec=[0, 1]; envelope .5 -> AP = 1 * .5 = .5.
    assert evaluate_map(gt, pred_of([fp, tp])).average_map == 0.5


def test_duplicate_prediction_is_false_positive():
    gt = gt_of([("a", 0, 10, 0), ("a", 20, 30, 0)])
    pr = pred_of([("a", 0, 10, 0, 0.9), ("a", 0, 10, 0, 0.8), ("a", 20, 30, 0, 0.7)])
    # tp=[1,0,1]; rec=[.5,.5,1]; prec=[1,.5,2/3]; envelope [1,2/3,2/3]
    # AP = .5*1 + .5*(2/3) = 5/6 at every threshold.
    r = evaluate_map(gt, pr)
    np.testing.assert_allclose(r.ap, 5 / 6, rtol=0, atol=1e-15)


def test_duplicate_ground_truth_is_kept():
    gt = gt_of([("a", 0, 10, 0), ("a", 0, 10, 0)])
    # One prediction can match only one of the two identical GT: rec=.5, prec=1 -> AP .5.
    assert evaluate_map(gt, pred_of([("a", 0, 10, 0, 0.9)])).average_map == 0.5
    # Two predictions match both: AP 1.
    two = pred_of([("a", 0, 10, 0, 0.9), ("a", 0, 10, 0, 0.8)])
    assert evaluate_map(gt, two).average_map == 1.0


def test_class_without_predictions_counts_zero():
    gt = gt_of([("a", 0, 10, 0), ("a", 20, 30, 1)])
    r = evaluate_map(gt, pred_of([("a", 0, 10, 0, 0.9)]))
    # AP class 0 = 1, class 1 = 0 -> mAP .5 at every threshold.
    np.testing.assert_array_equal(r.ap[:, 0], 1.0)
    np.testing.assert_array_equal(r.ap[:, 1], 0.0)
    assert r.average_map == 0.5
    np.testing.assert_array_equal(r.num_pred_per_class, [1, 0])


def test_predictions_of_class_without_gt_are_ignored():
    gt = gt_of([("a", 0, 10, 0), ("a", 20, 30, 5)])
    good = [("a", 0, 10, 0, 0.5), ("a", 20, 30, 5, 0.5)]
    # Label 1 has no GT. The original remapped GT ids {0, 5} to {0, 1}, so label 1 collided with
    # class 5 as its top-scoring FP (AP_5 = .5). Here it is ignored: every AP stays 1.
    r = evaluate_map(gt, pred_of(good + [("a", 20, 30, 1, 0.99), ("b", 0, 1, 7, 0.9)]))
    np.testing.assert_array_equal(r.ap, 1.0)
    assert r.ignored_predictions == 2
    np.testing.assert_array_equal(r.class_ids, [0, 5])


def test_video_without_gt_gives_false_positives():
    videos = [VideoRecord("a", "valid", 300, 30.0, 10.0, np.array([[0.0, 10.0]]), np.array([0])),
              VideoRecord("b", "valid", 300, 30.0, 10.0, np.zeros((0, 2)), np.zeros(0, np.int64))]
    gt = ground_truth_from_records(videos)
    assert len(gt) == 1
    pr = predictions_from_detections([
        {"video_id": "b", "segments": np.array([[0.0, 10.0]]), "scores": np.array([0.9]),
         "labels": np.array([0])},
        {"video_id": "a", "segments": np.array([[0.0, 10.0]]), "scores": np.array([0.8]),
         "labels": np.array([0])}])
    # Sorted: b (FP), a (TP): prec=[0, .5], rec=[0, 1] -> AP .5.
    assert evaluate_map(gt, pr).average_map == 0.5


def test_tp_at_low_threshold_fp_at_high():
    gt = gt_of([("a", 0, 10, 0)])
    pr = pred_of([("a", 0, 3, 0, 0.9)])             # tIoU = 3 / 10 = .3
    r = evaluate_map(gt, pr, tiou_thresholds=(0.1, 0.5))
    np.testing.assert_array_equal(r.ap[:, 0], [1.0, 0.0])
    np.testing.assert_array_equal(r.map_per_tiou, [1.0, 0.0])
    assert r.average_map == 0.5


def test_locked_gt_skipped_and_low_iou_ends_walk():
    gt = gt_of([("a", 0, 10, 0), ("a", 8, 18, 0)])
    # P1 matches g1 (tIoU 1). P2 = [1, 11]: tIoU g1 = 9/11, g2 = 3/17 = .176.
    # thr .1: g1 locked -> skipped, g2 .176 >= .1 -> TP. tp=[1,1] -> AP 1.
    # thr .5: g1 locked -> skipped, g2 .176 < .5 ends the walk -> FP. tp=[1,0]: rec=[.5,.5] -> AP .5.
    pr = pred_of([("a", 0, 10, 0, 0.9), ("a", 1, 11, 0, 0.8)])
    r = evaluate_map(gt, pr, tiou_thresholds=(0.1, 0.5))
    np.testing.assert_array_equal(r.ap[:, 0], [1.0, 0.5])


def test_empty_gt_is_user_error():
    with pytest.raises(UserError, match="--saveonly"):
        evaluate_map(gt_of([]), pred_of([("a", 0, 1, 0, 0.5)]), where="split 'test'")
    with pytest.raises(UserError, match="tIoU"):
        evaluate_map(gt_of([("a", 0, 1, 0)]), pred_of([]), tiou_thresholds=(0.0, 0.5))


def test_no_predictions_at_all():
    r = evaluate_map(gt_of([("a", 0, 1, 0)]), pred_of([]))
    assert r.average_map == 0.0


def test_interpolated_ap_matches_hand_value():
    # prec [1, .5, 2/3], rec [.5, .5, 1] -> 5/6 (see test_duplicate_prediction_is_false_positive)
    ap = interpolated_ap(np.array([[1.0, 0.5, 2 / 3]]), np.array([[0.5, 0.5, 1.0]]))
    np.testing.assert_allclose(ap, [5 / 6], atol=1e-15)


def test_to_dict_and_table():
    gt = gt_of([("a", 0, 10, 0), ("a", 20, 30, 1)])
    r = evaluate_map(gt, pred_of([("a", 0, 10, 0, 0.9)]))
    d = r.to_dict({0: "dog", 1: "cat"})
    assert d["average_map"] == 0.5
    assert d["map_per_tiou"]["0.10"] == 0.5
    assert d["per_class"]["0"]["name"] == "dog" and d["per_class"]["1"]["ap"]["0.50"] == 0.0
    assert d["recall_at_1x"]["0.30"] == 0.5
    lines = r.format_table().splitlines()
    assert lines[0] == "tIoU = 0.10: mAP = 50.00 (%)"
    assert lines[-1] == "Average mAP: 50.00 (%)"
    assert len(lines) == 6
    assert "Recall@5x = 50.00 (%)" in r.format_table(recall=True)


# ---------------------------------------------------------------- plain-Python reference

def _iou(p, g):
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    union = (p[1] - p[0]) + (g[1] - g[0]) - inter
    return inter / union if union > 0 else 0.0


def reference_map(gt_rows, pred_rows, thrs, top_k=(1, 5)):
    """Straight transcription of the metrics module docstring (stable sorts, unknown classes
    ignored). Returns AP (n_thr, n_cls), top-k recall (n_thr, n_cls, n_k) and the matched GT row
    of every prediction (n_thr, N), -1 for a false positive or an ignored prediction."""
    classes = sorted({r[3] for r in gt_rows})
    ap = [[0.0] * len(classes) for _ in thrs]
    rec_k = [[[0.0] * len(top_k) for _ in classes] for _ in thrs]
    matched = [[-1] * len(pred_rows) for _ in thrs]
    for j, c in enumerate(classes):
        g_rows = [k for k, r in enumerate(gt_rows) if r[3] == c]
        g = [gt_rows[k] for k in g_rows]
        p_rows = [k for k, r in enumerate(pred_rows) if r[3] == c]
        if not p_rows:
            continue
        p_rows = sorted(p_rows, key=lambda k: -pred_rows[k][4])  # stable
        p = [pred_rows[k] for k in p_rows]
        lock = [[False] * len(g) for _ in thrs]
        tp = [[0] * len(p) for _ in thrs]
        for i, pr in enumerate(p):
            cand = [k for k in range(len(g)) if g[k][0] == pr[0]]
            if not cand:
                continue
            ious = {k: _iou(pr[1:3], g[k][1:3]) for k in cand}
            cand = sorted(cand, key=lambda k: -ious[k])          # stable
            for t, thr in enumerate(thrs):
                for k in cand:
                    if ious[k] < thr:
                        break
                    if lock[t][k]:
                        continue
                    tp[t][i] = 1
                    lock[t][k] = True
                    matched[t][p_rows[i]] = g_rows[k]
                    break
        for t in range(len(thrs)):
            ctp = cfp = 0
            prec, rec = [], []
            for i in range(len(p)):
                ctp += tp[t][i]
                cfp += 1 - tp[t][i]
                prec.append(ctp / (ctp + cfp))
                rec.append(ctp / len(g))
            mp = [0.0] + prec + [0.0]
            mr = [0.0] + rec + [1.0]
            for i in range(len(mp) - 2, -1, -1):
                mp[i] = max(mp[i], mp[i + 1])
            ap[t][j] = sum((mr[i] - mr[i - 1]) * mp[i] for i in range(1, len(mr)) if mr[i] != mr[i - 1])
        for t, thr in enumerate(thrs):
            for kk, k in enumerate(top_k):
                hits = 0
                for v in {r[0] for r in g}:
                    gv = [r for r in g if r[0] == v]
                    pv = [r for r in p if r[0] == v][:k * len(gv)]
                    hits += sum(any(_iou(q[1:3], r[1:3]) >= thr for q in pv) for r in gv)
                rec_k[t][j][kk] = hits / len(g)
    return np.array(ap), np.array(rec_k), np.array(matched, dtype=np.int64).reshape(len(thrs), -1)


def _random_case(rng):
    n_vid, n_cls = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    gt = []
    for _ in range(int(rng.integers(1, 12))):
        s = float(rng.integers(0, 20))
        gt.append((f"v{rng.integers(n_vid)}", s, s + float(rng.integers(1, 6)), int(rng.integers(n_cls))))
    if rng.random() < 0.3:
        gt.append(gt[0])                                          # duplicate GT
    preds = []
    for _ in range(int(rng.integers(0, 40))):
        if gt and rng.random() < 0.6:                             # near a GT
            v, s, e, l = gt[int(rng.integers(len(gt)))]
            s2 = s + float(rng.integers(-2, 3))
            preds.append((v, s2, max(s2 + 1, e + float(rng.integers(-2, 3))),
                          l if rng.random() < 0.8 else int(rng.integers(n_cls + 1)),
                          float(rng.integers(1, 6)) / 5))        # coarse scores: many ties
        else:
            s = float(rng.integers(0, 20))
            preds.append((f"v{rng.integers(n_vid + 1)}", s, s + float(rng.integers(1, 6)),
                          int(rng.integers(n_cls + 1)), float(rng.random())))
    return gt, preds


@pytest.mark.parametrize("seed", range(20))
def test_matches_plain_python_reference(seed):
    rng = np.random.default_rng(seed)
    gt, preds = _random_case(rng)
    thrs = (0.1, 0.2, 0.3, 0.4, 0.5)
    r = evaluate_map(gt_of(gt), pred_of(preds), thrs)
    ap, rec, matched = reference_map(gt, preds, thrs)
    np.testing.assert_allclose(r.ap, ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.recall, rec, rtol=0, atol=1e-12)
    assert math.isclose(r.average_map, float(ap.mean(axis=1).mean()), abs_tol=1e-12)
    # The per-prediction outcome is the reference's walk, event for event.
    np.testing.assert_array_equal(r.matches.matched_event, matched)
    np.testing.assert_array_equal(r.matches.is_tp.sum(axis=1),
                                  [sum(m >= 0 for m in row) for row in matched])


def test_prediction_matches_hand_case():
    gt = gt_of([("a", 0, 10, 0), ("a", 8, 18, 0), ("a", 30, 40, 1)])
    # Input order: a low-score duplicate of event 0, a class-2 prediction (no GT: ignored),
    # the best prediction of event 0, and [1, 11] (tIoU 9/11 with event 0, 3/17 with event 1).
    pr = pred_of([("a", 0, 10, 0, 0.5), ("a", 0, 5, 2, 0.99), ("a", 0, 10, 0, 0.9),
                  ("a", 1, 11, 0, 0.8)])
    m = evaluate_map(gt, pr, tiou_thresholds=(0.1, 0.5)).matches
    np.testing.assert_array_equal(m.matched_event, [[-1, -1, 0, 1], [-1, -1, 0, -1]])
    np.testing.assert_array_equal(m.rank_in_class, [2, -1, 0, 1])
    np.testing.assert_array_equal(m.counted, [True, False, True, True])
    assert m.threshold_index(0.5) == 1
    with pytest.raises(KeyError, match="0.3"):
        m.threshold_index(0.3)


def test_thresholds_are_independent():
    rng = np.random.default_rng(3)
    gt, preds = _random_case(rng)
    many = evaluate_map(gt_of(gt), pred_of(preds), (0.05, 0.1, 0.3, 0.5, 0.7, 0.9))
    for i, t in enumerate(many.tiou_thresholds):
        one = evaluate_map(gt_of(gt), pred_of(preds), (t,))
        np.testing.assert_array_equal(one.ap[0], many.ap[i])
        np.testing.assert_array_equal(one.matches.matched_event[0], many.matches.matched_event[i])
