"""Tests of libs/evaluation/report/errors.py: DETAD false-positive types on hand-made cases, the
window, the mAP gains (hand-computed AP values) and a plain-Python reference on random cases."""
from __future__ import annotations

import numpy as np
import pytest

from libs.evaluation.metrics import evaluate_map
from libs.evaluation.events import Predictions
from libs.evaluation.report.errors import (ERROR_TYPES, NOT_COUNTED, TRUE_POSITIVE, analyse_errors,
                                           outcomes_from_matches, window_mask)
from report_helpers import gt_of, pred_of

DD, WL, LOC, CONF, BG = range(5)
THRS = (0.1, 0.2, 0.3, 0.4, 0.5)


# Events: E0 class 0 [0, 10], E1 class 1 [20, 30], E2 class 0 [40, 50] (video a); video b has none.
EVENTS = [("a", 0, 10, 0), ("a", 20, 30, 1), ("a", 40, 50, 0)]
# (prediction, expected outcome at tIoU 0.5). Class 0 in score order: P2 P0 P1 P3 P4 P5 P9 P12.
PREDS = [
    (("a", 0, 10, 0, 0.8), TRUE_POSITIVE),    # P0 matches E0
    (("a", 0, 9, 0, 0.7), DD),                # P1 tIoU .9 with E0, matched by P0
    (("a", 20, 30, 0, 0.9), WL),              # P2 tIoU 1 with E1 (class 1)
    (("a", 40, 44, 0, 0.6), LOC),             # P3 tIoU .4 with E2
    (("a", 20, 23, 0, 0.5), CONF),            # P4 tIoU .3 with E1 (class 1)
    (("a", 60, 70, 0, 0.45), BG),             # P5 overlaps nothing
    (("a", 20, 30, 1, 0.95), TRUE_POSITIVE),  # P6 matches E1
    (("a", 0, 10, 1, 0.96), WL),              # P7 class 1 on E0 (class 0)
    (("a", 0, 10, 2, 0.99), NOT_COUNTED),     # P8 class 2 has no ground truth: ignored
    (("b", 0, 5, 0, 0.2), BG),                # P9 video without events
    (("a", 40, 50, 0, 0.1), TRUE_POSITIVE),   # P12 matches E2 (last of class 0)
]


def hand_case():
    return gt_of(EVENTS), pred_of([p for p, _ in PREDS]), np.array([o for _, o in PREDS])


def test_outcomes_of_hand_case_are_exact():
    gt, preds, expected = hand_case()
    result = evaluate_map(gt, preds, THRS)
    np.testing.assert_array_equal(outcomes_from_matches(gt, preds, result, 0.5), expected)


def test_right_class_wins_over_larger_tiou_with_other_class():
    # Q1 overlaps the matched class-0 event (tIoU .905) and a class-1 event even more (tIoU 1):
    # DETAD's largest-tIoU rule would call it a wrong label; the right class is checked first.
    gt = gt_of([("a", 0, 10, 0), ("a", 0.5, 10.5, 1)])
    preds = pred_of([("a", 0, 10, 0, 0.9), ("a", 0.5, 10.5, 0, 0.8), ("a", 0, 3, 0, 0.7)])
    codes = outcomes_from_matches(gt, preds, evaluate_map(gt, preds, THRS), 0.5)
    # Q2 [0, 3]: same class .3, other class 2.5/10.5 = .24: localisation.
    np.testing.assert_array_equal(codes, [TRUE_POSITIVE, DD, LOC])


def test_counts_add_up_and_window():
    gt, preds, expected = hand_case()
    result = evaluate_map(gt, preds, THRS)
    ea = analyse_errors(gt, preds, result, tiou=0.5, fp_window=10)
    assert ea.counts == {"double_detection": 1, "wrong_label": 2, "localisation": 1,
                         "confusion": 1, "background": 2}
    n_fp = int(((expected >= 0)).sum())
    assert sum(ea.counts.values()) == n_fp == ea.window_size - ea.true_positives == 7
    assert ea.true_positives == 3 and ea.window_size == 10          # P8 is not counted
    for t, counts in ea.counts_per_tiou.items():                    # every threshold adds up
        fp_t = int((result.matches.counted
                    & (result.matches.matched_event[result.matches.threshold_index(float(t))] < 0)).sum())
        assert sum(counts.values()) == fp_t
    # At tIoU .1 nothing can be a localisation or confusion error ([0.1, 0.1) is empty).
    assert ea.counts_per_tiou["0.10"]["localisation"] == ea.counts_per_tiou["0.10"]["confusion"] == 0
    # Window 1G: class 0 (G=2) keeps P2, P0; class 1 (G=1) keeps P7.
    w = window_mask(gt, preds, result, 1)
    np.testing.assert_array_equal(np.nonzero(w)[0], [0, 2, 7])
    small = analyse_errors(gt, preds, result, tiou=0.5, fp_window=1)
    assert small.counts == {"double_detection": 0, "wrong_label": 2, "localisation": 0,
                            "confusion": 0, "background": 0}
    assert small.profile_k == [1]
    assert small.profile["true_positive"] == [pytest.approx(1 / 3)]
    assert small.profile["wrong_label"] == [pytest.approx(2 / 3)]


def test_profile_fractions_sum_to_one():
    gt, preds, _ = hand_case()
    ea = analyse_errors(gt, preds, evaluate_map(gt, preds, THRS), fp_window=3)
    assert ea.profile_k == [1, 2, 3]
    total = np.sum([ea.profile[k] for k in ["true_positive", *ERROR_TYPES]], axis=0)
    np.testing.assert_allclose(total, 1.0)


def test_map_gains_match_hand_computed_ap():
    # At tIoU .5, class 0 in score order: WL TP DD LOC CONF BG BG TP (G = 2), class 1: WL TP.
    # AP_0 = .5 * 1/2 + .5 * 2/8 = 3/8; AP_1 = 1 * 1/2; window mAP = 7/16.
    gt, preds, _ = hand_case()
    ea = analyse_errors(gt, preds, evaluate_map(gt, preds, THRS), tiou=0.5, fp_window=10,
                        gain_thresholds=(0.5,))
    assert ea.window_average_map == pytest.approx(7 / 16, abs=1e-12)
    expected = {
        "wrong_label": (9 / 14 + 1) / 2,        # TP DD LOC CONF BG BG TP -> .5 + .5 * 2/7; AP_1 1
        "double_detection": (11 / 28 + 0.5) / 2,  # WL TP LOC CONF BG BG TP -> .25 + .5 * 2/7
        "localisation": (11 / 28 + 0.5) / 2,
        "confusion": (11 / 28 + 0.5) / 2,
        "background": (5 / 12 + 0.5) / 2,       # WL TP DD LOC CONF TP -> .25 + .5 * 2/6
    }
    for name, fixed_map in expected.items():
        assert ea.map_gain[name] == pytest.approx(fixed_map - 7 / 16, abs=1e-12), name


def test_map_gain_over_thresholds_is_the_metric_after_removal():
    gt, preds, _ = hand_case()
    result = evaluate_map(gt, preds, THRS)
    ea = analyse_errors(gt, preds, result, fp_window=10)
    base = evaluate_map(gt, preds, THRS).average_map            # every counted pred in window
    assert ea.window_average_map == pytest.approx(base, abs=1e-12)
    for e, name in enumerate(ERROR_TYPES):
        maps = []
        for t in THRS:
            codes = outcomes_from_matches(gt, preds, result, t)
            keep = codes != e
            sub = Predictions(preds.video_ids[keep], preds.t_start[keep], preds.t_end[keep],
                              preds.labels[keep], preds.scores[keep])
            maps.append(evaluate_map(gt, sub, (t,)).map_per_tiou[0])
        assert ea.map_gain[name] == pytest.approx(np.mean(maps) - base, abs=1e-12), name
        assert ea.map_gain[name] >= -1e-12           # removing false positives never hurts


# ---------------------------------------------------------------- plain-Python reference

def _iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def reference_types(events, preds, matched, thr, low=0.1):
    """Type of every prediction from the docstring's table, one prediction at a time."""
    classes = {e[3] for e in events}
    out = []
    for i, p in enumerate(preds):
        if p[3] not in classes:
            out.append(NOT_COUNTED)
            continue
        if matched[i] >= 0:
            out.append(TRUE_POSITIVE)
            continue
        same = max([_iou(p[1:3], e[1:3]) for e in events if e[0] == p[0] and e[3] == p[3]], default=0)
        other = max([_iou(p[1:3], e[1:3]) for e in events if e[0] == p[0] and e[3] != p[3]], default=0)
        out.append(DD if same >= thr else WL if other >= thr else LOC if same >= low
                   else CONF if other >= low else BG)
    return np.array(out)


@pytest.mark.parametrize("seed", range(8))
def test_matches_plain_python_reference(seed):
    rng = np.random.default_rng(seed)
    events = [(f"v{rng.integers(3)}", s, s + float(rng.integers(1, 6)), int(rng.integers(3)))
              for s in rng.integers(0, 20, int(rng.integers(2, 12))).astype(float)]
    preds = []
    for _ in range(int(rng.integers(5, 60))):
        v, s, e, c = events[int(rng.integers(len(events)))]
        s2 = s + float(rng.integers(-3, 4))
        preds.append((v if rng.random() < 0.9 else "v9", s2, max(s2 + 1, e + float(rng.integers(-3, 4))),
                      c if rng.random() < 0.6 else int(rng.integers(4)), float(rng.random())))
    gt, pr = gt_of(events), pred_of(preds)
    result = evaluate_map(gt, pr, THRS)
    for t in THRS:
        ti = result.matches.threshold_index(t)
        codes = outcomes_from_matches(gt, pr, result, t)
        np.testing.assert_array_equal(codes, reference_types(events, preds,
                                                             result.matches.matched_event[ti], t))
        # A double detection overlaps (>= t) only events that are matched already.
        matched = set(result.matches.matched_event[ti][result.matches.matched_event[ti] >= 0])
        for i in np.nonzero(codes == DD)[0]:
            close = [k for k, e in enumerate(events) if e[0] == preds[i][0] and e[3] == preds[i][3]
                     and _iou(preds[i][1:3], e[1:3]) >= t]
            assert close and all(k in matched for k in close)
