"""Shared helpers of the report tests: ground truth and predictions from row tuples."""
import numpy as np

from libs.evaluation.events import GroundTruth, Predictions


def gt_of(rows):
    """``[(video, start, end, label), ...]`` -> GroundTruth."""
    v, s, e, l = zip(*rows)
    return GroundTruth(np.array(v, dtype=str), np.array(s, float), np.array(e, float), np.array(l, int))


def pred_of(rows):
    """``[(video, start, end, label, score), ...]`` -> Predictions."""
    v, s, e, l, c = zip(*rows)
    return Predictions(np.array(v, dtype=str), np.array(s, float), np.array(e, float),
                       np.array(l, int), np.array(c, float))
