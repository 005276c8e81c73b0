"""Tests of libs/modeling/assign.py: golden parity and a brute-force per-point reference."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from libs.modeling.assign import assign_targets

from golden import GOLDEN_FILES, load_golden as _golden

REG_RANGES = [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)]




def make_points(seq_len: int, num_levels: int = 6) -> torch.Tensor:
    """Rows [t, lo, hi, stride] of all levels, concatenated level-major (reference layout)."""
    rows = []
    for lvl in range(num_levels):
        s = 2 ** lvl
        t = torch.arange(0, seq_len, s, dtype=torch.float32)
        lo, hi = REG_RANGES[lvl]
        rows.append(torch.stack([t, torch.full_like(t, lo), torch.full_like(t, hi),
                                 torch.full_like(t, s)], dim=1))
    return torch.cat(rows)                                             # (P, 4)


def brute_force(points: torch.Tensor, segs: torch.Tensor, labels: torch.Tensor, num_classes: int,
                center_sample: str, radius: float):
    """Per point, per GT loop in float32 scalars, written straight from docs/numerics.md s.5."""
    f32 = np.float32
    num_pts = points.shape[0]
    cls = np.zeros((num_pts, num_classes), np.float32)
    reg = np.zeros((num_pts, 2), np.float32)
    pts = points.numpy().astype(np.float32)
    gts = segs.numpy().astype(np.float32).reshape(-1, 2)
    labs = labels.numpy().reshape(-1)
    if gts.shape[0] == 0:
        return torch.from_numpy(cls), torch.from_numpy(reg)
    for p in range(num_pts):
        t, lo, hi, s = (f32(v) for v in pts[p])
        lens, dists = [], []
        for a, b in gts:
            a, b = f32(a), f32(b)
            left, right = f32(t - a), f32(b - t)
            if center_sample == "radius":
                c = f32(f32(0.5) * f32(a + b))
                r = f32(s * f32(radius))
                inside = min(f32(t - max(f32(c - r), a)), f32(min(f32(c + r), b) - t)) > 0
            else:
                inside = min(left, right) > 0
            in_range = lo <= max(left, right) <= hi
            lens.append(f32(b - a) if (inside and in_range) else f32(np.inf))
            dists.append((left, right))
        min_len = min(lens)
        arg = lens.index(min_len)                                      # first index; 0 if all inf
        for n, ln in enumerate(lens):
            if ln < np.inf and ln <= f32(min_len + f32(1e-3)):
                cls[p, labs[n]] = 1.0
        reg[p] = [dists[arg][0] / s, dists[arg][1] / s]
    return torch.from_numpy(cls), torch.from_numpy(reg)


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_golden_targets(name):
    g = _golden(name)
    points = torch.cat(g["train"]["points"])                           # (P, 4)
    items = g["train_items"]
    cls, reg = assign_targets(points, [it["segments"] for it in items],
                              [it["labels"] for it in items], 5, "radius", 1.5)
    num_pts = points.shape[0]
    assert cls.shape == (len(items), num_pts, 5) and reg.shape == (len(items), num_pts, 2)
    for i in range(len(items)):
        assert torch.equal(cls[i], g["train"]["gt_cls_labels"][i])
        # the reference keeps a target for every point (negatives: distances to GT 0)
        torch.testing.assert_close(reg[i], g["train"]["gt_offsets"][i], rtol=0, atol=1e-5)


def test_golden_multilabel_item():
    g = _golden("tiny_actionformer.pt")
    points = torch.cat(g["train"]["points"])
    it = g["train_items"][0]
    cls, _ = assign_targets(points, [it["segments"]], [it["labels"]], 5, "radius", 1.5)
    assert (cls[0].sum(-1) > 1).any()                                  # identical segs, 2 labels


def _random_gt(rng: np.random.Generator, seq_len: int, num_classes: int):
    n = int(rng.integers(1, 9))
    starts = rng.uniform(-3, seq_len + 1, n)
    kinds = rng.integers(0, 4, n)
    lengths = np.where(kinds == 0, rng.uniform(0.01, 0.8, n),          # very short
                       np.where(kinds == 1, rng.integers(1, 20, n).astype(float),
                                rng.uniform(0.5, seq_len / 1.5, n)))
    starts = np.where(kinds == 1, np.round(starts), starts)            # integer ends: boundaries
    segs = np.stack([starts, starts + lengths], 1)
    labels = rng.integers(0, num_classes, n)
    if rng.random() < 0.5:                                             # identical seg, other label
        segs = np.concatenate([segs, segs[:1]])
        labels = np.concatenate([labels, [(labels[0] + 1) % num_classes]])
    if rng.random() < 0.5:                                             # near-equal length (< 1e-3)
        segs = np.concatenate([segs, segs[:1] + np.array([[0.0, 5e-4]])])
        labels = np.concatenate([labels, [(labels[0] + 2) % num_classes]])
    return (torch.tensor(segs, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64))


@pytest.mark.parametrize("center_sample", ["radius", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed, center_sample):
    rng = np.random.default_rng(seed)
    seq_len, num_classes, radius = 48, 4, 1.5
    points = make_points(seq_len)
    segs, labels = zip(*[_random_gt(rng, seq_len, num_classes) for _ in range(3)])
    segs = list(segs) + [torch.zeros(0, 2)]                            # a video with no GT
    labels = list(labels) + [torch.zeros(0, dtype=torch.int64)]
    cls, reg = assign_targets(points, segs, labels, num_classes, center_sample, radius)
    num_positive = 0
    for b in range(len(segs)):
        ref_cls, ref_reg = brute_force(points, segs[b], labels[b], num_classes, center_sample,
                                       radius)
        assert torch.equal(cls[b], ref_cls), f"video {b}"
        torch.testing.assert_close(reg[b], ref_reg, rtol=0, atol=1e-6)
        num_positive += int((ref_cls.sum(-1) > 0).sum())
    assert num_positive > 0
    assert cls[-1].abs().sum() == 0 and reg[-1].abs().sum() == 0


def test_identical_segments_multilabel_and_first_index_regression():
    points = make_points(32)
    segs = torch.tensor([[10.0, 14.0], [10.0, 14.0], [9.0, 20.0]])
    labels = torch.tensor([2, 0, 1])
    cls, reg = assign_targets(points, [segs], [labels], 3, "radius", 1.5)
    pos = cls[0].sum(-1) > 0
    assert pos.any()
    # points matching the two identical segments carry both labels
    both = (cls[0, :, 0] == 1) & (cls[0, :, 2] == 1)
    assert both.any()
    t, s = points[both, 0], points[both, 3]
    torch.testing.assert_close(reg[0, both], torch.stack([(t - 10) / s, (14 - t) / s], 1))


def test_strict_centre_and_inclusive_range():
    # stride-1 level only: GT [10, 12]; centre 11, radius 1.5 -> region (10, 12) clipped to GT
    points = torch.tensor([[t, 0.0, 4.0, 1.0] for t in range(0, 16)])
    segs, labels = torch.tensor([[10.0, 12.0]]), torch.tensor([0])
    cls, _ = assign_targets(points, [segs], [labels], 1, "radius", 1.5)
    assert cls[0, :, 0].nonzero().flatten().tolist() == [11]          # 10 and 12 fail strictness
    # max distance exactly hi=4 is in range (inclusive); 4.5 is not
    points = torch.tensor([[4.0, 0.0, 4.0, 1.0]])
    for b, expect in ((8.0, 1.0), (8.5, 0.0)):
        cls, _ = assign_targets(points, [torch.tensor([[3.5, b]])], [labels], 1, "none", 1.5)
        assert cls[0, 0, 0].item() == expect


def test_very_short_segment_gets_no_positive():
    points = make_points(32)
    segs, labels = torch.tensor([[5.2, 5.6]]), torch.tensor([0])       # no integer strictly inside
    cls, reg = assign_targets(points, [segs], [labels], 1, "radius", 1.5)
    assert cls.sum() == 0
    # negatives keep the distances to GT 0 (reference parity)
    torch.testing.assert_close(reg[0, :, 0], (points[:, 0] - 5.2) / points[:, 3])


def test_empty_batch_gt():
    points = make_points(16)
    cls, reg = assign_targets(points, [torch.zeros(0, 2)] * 2,
                              [torch.zeros(0, dtype=torch.int64)] * 2, 3, "radius", 1.5)
    assert cls.shape == (2, points.shape[0], 3) and reg.shape == (2, points.shape[0], 2)
    assert cls.abs().sum() == 0 and reg.abs().sum() == 0


def test_bad_center_sample():
    with pytest.raises(ValueError):
        assign_targets(make_points(8), [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.int64)],
                       2, "box", 1.5)
