"""Tests of libs/modeling/decode.py, plus a plain reference Gaussian soft-NMS (docs/numerics.md s.7.2)
used to check that decoded candidates reproduce the golden detections end to end."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from libs.modeling.decode import decode_candidates

from golden import GOLDEN_FILES, load_golden as _golden

TEST_CFG = dict(pre_nms_thresh=0.001, pre_nms_topk=5000, duration_thresh=0.05)




# ----------------------------------------------------------------------------------------------
# reference soft-NMS (float32 numpy; the C++ loop of docs/numerics.md s.7.2, swaps reproduced literally)

def soft_nms_ref(segs: np.ndarray, scores: np.ndarray, sigma: float, min_score: float):
    """Gaussian soft-NMS of one class. Returns (original indices, dets (n, 3)) in pick order."""
    f32 = np.float32
    x1, x2 = segs[:, 0].astype(f32).copy(), segs[:, 1].astype(f32).copy()
    sc = scores.astype(f32).copy()
    area = (x2 - x1 + f32(1e-6)).astype(f32)
    ind = np.arange(len(sc))
    arrays = [x1, x2, sc, area, ind]
    n, i, dets = len(sc), 0, []
    sigma, min_score = f32(sigma), f32(min_score)
    while i < n:
        m = i + int(np.argmax(sc[i:n]))                  # first max = earliest position on ties
        for arr in arrays:                               # pivot to slot i, element i to slot m
            arr[i], arr[m] = arr[m], arr[i]
        dets.append((x1[i], x2[i], sc[i], ind[i]))
        rest = slice(i + 1, n)
        inter = np.maximum(f32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ovr = inter / (area[i] + area[rest] - inter)
        sc[rest] = sc[rest] * np.exp(-(ovr * ovr) / sigma).astype(f32)
        drop = (sc[rest] < min_score).tolist()
        # walk p = i+1..: a dropped slot receives the last element, which is re-tested there
        slots = list(range(i + 1, n))
        p, cnt = 0, len(slots)
        while p < cnt:
            if drop[slots[p] - i - 1]:
                slots[p] = slots[cnt - 1]
                cnt -= 1
            else:
                p += 1
        keep = np.array(slots[:cnt], dtype=np.int64)
        for arr in arrays:
            arr[i + 1:i + 1 + cnt] = arr[keep]
        n = i + 1 + cnt
        i += 1
    idx = np.array([d[3] for d in dets], dtype=np.int64)
    out = np.array([d[:3] for d in dets], dtype=f32).reshape(-1, 3)
    return idx, out


def multiclass_soft_nms_ref(segs, scores, labels, sigma=0.4, min_score=0.001, max_seg_num=500):
    """Per class (ascending), cap per class, concatenate, stable sort by score, cut."""
    segs, scores, labels = segs.numpy(), scores.numpy(), labels.numpy()
    out_segs, out_scores, out_labels = [], [], []
    for c in np.unique(labels):
        sel = np.nonzero(labels == c)[0]
        idx, dets = soft_nms_ref(segs[sel], scores[sel], sigma, min_score)
        dets = dets[:max_seg_num]
        out_segs.append(dets[:, :2])
        out_scores.append(dets[:, 2])
        out_labels.append(np.full(len(dets), c, dtype=np.int64))
    if not out_segs:
        return torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    segs_all = torch.from_numpy(np.concatenate(out_segs))
    scores_all = torch.from_numpy(np.concatenate(out_scores))
    labels_all = torch.from_numpy(np.concatenate(out_labels))
    order = torch.sort(scores_all, descending=True, stable=True).indices[:max_seg_num]
    return segs_all[order], scores_all[order], labels_all[order]


def grid_to_seconds(segs: torch.Tensor, fps: float, feat_stride: float, num_frames: float,
                    duration: float) -> torch.Tensor:
    segs = (segs * feat_stride + 0.5 * num_frames) / fps
    segs = torch.where(segs <= 0.0, segs * 0.0, segs)
    return torch.where(segs >= duration, segs * 0.0 + duration, segs)


def test_soft_nms_ref_seed_vector():
    # docs/numerics.md s.7.2 check vector (multiclass Gaussian soft-NMS, sigma 0.4):
    # [1,11] vs [0,10]: iou 9/11 -> .8*exp(-(9/11)^2/.4) = .1501; [2,9]: iou .7 with [0,10] and
    # with [1,11] -> .5*exp(-.49/.4)^2 = .0431
    segs = torch.tensor([[0, 10], [1, 11], [20, 30], [0, 10], [2, 9]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([0, 0, 0, 1, 0])
    s, sc, lb = multiclass_soft_nms_ref(segs, scores, labels, sigma=0.4, min_score=0.001)
    assert lb.tolist() == [0, 0, 1, 0, 0]
    assert s[:3].tolist() == [[0, 10], [20, 30], [0, 10]]
    torch.testing.assert_close(sc[:3], torch.tensor([0.9, 0.7, 0.6]))
    torch.testing.assert_close(sc[3:], torch.tensor([0.1501, 0.0431]), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# golden checks

def _eval_cases():
    for name in GOLDEN_FILES:
        g = _golden(name)
        for i in range(len(g["eval"])):
            yield name, i


def _decode_golden(g, i):
    ev = g["eval"][i]
    return decode_candidates(ev["points"], ev["cls_logits"], ev["offsets"], ev["fpn_masks"],
                             **TEST_CFG)[0]


@pytest.mark.parametrize("name,i", [("tiny_actionformer.pt", 0), ("tiny_actionformer.pt", 1),
                                    ("tiny_fusion.pt", 0)])
def test_golden_first_pick_per_class(name, i):
    g = _golden(name)
    cand = _decode_golden(g, i)
    det = g["eval"][i]["detections"]
    assert cand["labels"].dtype == torch.int64
    for c in det["labels"].unique().tolist():
        ours = cand["scores"][cand["labels"] == c].max().item()
        ref = det["scores"][det["labels"] == c].max().item()
        assert abs(ours - ref) <= 1e-5, (c, ours, ref)
    # every golden score is at most the best candidate of its class (soft-NMS only decays)
    for c in det["labels"].unique().tolist():
        best = cand["scores"][cand["labels"] == c].max()
        assert (det["scores"][det["labels"] == c] <= best + 1e-6).all()


def _match(ref_segs, ref_scores, ref_labels, segs, scores, labels, seg_tol=1e-4, sc_tol=1e-5):
    """One-to-one greedy matching; returns the indices of reference rows left unmatched."""
    used = np.zeros(len(scores), dtype=bool)
    missing = []
    for k in range(len(ref_scores)):
        ok = ((labels == ref_labels[k]) & (np.abs(scores - ref_scores[k]) <= sc_tol)
              & (np.abs(segs - ref_segs[k]).max(axis=1) <= seg_tol) & ~used)
        hits = np.nonzero(ok)[0]
        if len(hits) == 0:
            missing.append(k)
        else:
            used[hits[0]] = True
    return missing


@pytest.mark.parametrize("name,i", [("tiny_actionformer.pt", 0), ("tiny_actionformer.pt", 1),
                                    ("tiny_fusion.pt", 0)])
def test_golden_detections_via_reference_nms(name, i):
    g = _golden(name)
    cand = _decode_golden(g, i)
    item = g["eval_items"][i]
    segs, scores, labels = multiclass_soft_nms_ref(cand["segments"], cand["scores"],
                                                   cand["labels"], 0.4, 0.001, 500)
    secs = grid_to_seconds(segs, float(item["fps"]), float(item["feat_stride"]),
                           float(item["feat_num_frames"]), float(item["duration"]))
    det = g["eval"][i]["detections"]
    assert len(scores) == len(det["scores"])
    # scores in output order agree (order among exactly equal scores may differ, values not)
    torch.testing.assert_close(scores, det["scores"], rtol=0, atol=1e-5)
    missing = _match(det["segments"].numpy(), det["scores"].numpy(), det["labels"].numpy(),
                     secs.numpy(), scores.numpy(), labels.numpy())
    assert missing == [], f"{len(missing)} golden detections not reproduced"


# ----------------------------------------------------------------------------------------------
# unit tests

def _random_outputs(batch: int, lens=(16, 8, 4), num_classes: int = 3, seed: int = 0,
                    quantise: bool = True):
    gen = torch.Generator().manual_seed(seed)
    points, logits, offsets, masks = [], [], [], []
    for lvl, t_len in enumerate(lens):
        s = 2 ** lvl
        t = torch.arange(0, t_len * s, s, dtype=torch.float32)
        points.append(torch.stack([t, torch.zeros_like(t), torch.full_like(t, 1e4),
                                   torch.full_like(t, s)], 1))                      # (T_l, 4)
        lg = torch.randn(batch, t_len, num_classes, generator=gen) * 3
        if quantise:                                       # many exact ties between scores
            lg = torch.round(lg)
        logits.append(lg)
        offsets.append(torch.rand(batch, t_len, 2, generator=gen) * 3)
        m = torch.ones(batch, t_len, dtype=torch.bool)
        for b in range(batch):
            m[b, max(1, t_len - b * t_len // 4):] = False
        masks.append(m)
    return points, logits, offsets, masks


def _decode_one_by_one_reference(points, logits, offsets, masks, thresh, topk, dur):
    """Direct transcription of docs/numerics.md s.7.1 for one video (stable sort)."""
    segs_all, scores_all, labels_all = [], [], []
    for pts, lg, off, m in zip(points, logits, offsets, masks):
        num_classes = lg.shape[-1]
        prob = (lg.sigmoid() * m[:, None]).flatten()
        keep = prob > thresh
        idx = keep.nonzero(as_tuple=True)[0]
        vals, order = prob[keep].sort(descending=True, stable=True)
        n = min(topk, idx.numel())
        vals, idx = vals[:n], idx[order[:n]]
        pt, cls = idx // num_classes, idx % num_classes
        left = pts[pt, 0] - off[pt, 0] * pts[pt, 3]
        right = pts[pt, 0] + off[pt, 1] * pts[pt, 3]
        ok = (right - left) > dur
        segs_all.append(torch.stack([left, right], 1)[ok])
        scores_all.append(vals[ok])
        labels_all.append(cls[ok])
    return torch.cat(segs_all), torch.cat(scores_all), torch.cat(labels_all)


@pytest.mark.parametrize("topk", [5000, 7])
def test_batch_equals_single_and_reference(topk):
    points, logits, offsets, masks = _random_outputs(3)
    cfg = dict(pre_nms_thresh=0.05, pre_nms_topk=topk, duration_thresh=0.5)
    batched = decode_candidates(points, logits, offsets, masks, **cfg)
    assert len(batched) == 3
    for b in range(3):
        single = decode_candidates(points, [x[b:b + 1] for x in logits],
                                   [x[b:b + 1] for x in offsets], [x[b:b + 1] for x in masks],
                                   **cfg)[0]
        for key in ("segments", "scores", "labels"):
            assert torch.equal(batched[b][key], single[key]), (b, key)
        ref = _decode_one_by_one_reference(points, [x[b] for x in logits],
                                           [x[b] for x in offsets], [x[b] for x in masks],
                                           0.05, topk, 0.5)
        for key, r in zip(("segments", "scores", "labels"), ref):
            assert torch.equal(batched[b][key], r), (b, key)


def test_topk_is_per_level():
    points, logits, offsets, masks = _random_outputs(1, quantise=False)
    offsets = [o + 1.0 for o in offsets]                   # no duration drops
    topk = 4
    out = decode_candidates(points, logits, offsets, masks, pre_nms_thresh=0.0,
                            pre_nms_topk=topk, duration_thresh=0.0)[0]
    assert len(out["scores"]) == topk * len(points)
    for lvl in range(len(points)):
        chunk = out["scores"][lvl * topk:(lvl + 1) * topk]
        prob = (logits[lvl][0].sigmoid() * masks[lvl][0, :, None]).flatten()
        torch.testing.assert_close(chunk, prob.sort(descending=True).values[:topk])


def test_thresholds_are_strict_and_mask_applies():
    points = [torch.tensor([[0.0, 0, 1e4, 1], [1.0, 0, 1e4, 1], [2.0, 0, 1e4, 1]])]
    logits = [torch.tensor([[[0.0], [0.0], [5.0]]])]       # sigmoid(0) = 0.5 exactly
    offsets = [torch.tensor([[[0.25, 0.25], [0.25, 0.5], [1.0, 1.0]]])]   # lengths .5, .75, 2
    masks = [torch.tensor([[True, True, False]])]
    out = decode_candidates(points, logits, offsets, masks, 0.4, 10, 0.5)[0]
    assert out["segments"].tolist() == [[0.75, 1.5]]      # length .5 == thresh is dropped
    out = decode_candidates(points, logits, offsets, masks, 0.5, 10, 0.0)[0]
    assert len(out["scores"]) == 0                         # prob .5 == thresh is dropped
    out = decode_candidates(points, logits, offsets, masks, 0.0, 10, 0.0)[0]
    assert out["scores"].tolist() == [0.5, 0.5]            # masked point never appears
    assert out["segments"].tolist() == [[-0.25, 0.25], [0.75, 1.5]]   # stable: lower index first


def test_idx_to_point_and_class_and_stride():
    points = [torch.tensor([[0.0, 0, 4, 1], [1.0, 0, 4, 1]]),
              torch.tensor([[0.0, 4, 8, 2]])]
    logits = [torch.full((1, 2, 3), -20.0), torch.full((1, 1, 3), -20.0)]
    logits[0][0, 1, 2] = 3.0
    logits[1][0, 0, 1] = 1.0
    offsets = [torch.ones(1, 2, 2), torch.tensor([[[1.5, 0.5]]])]
    masks = [torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)]
    out = decode_candidates(points, logits, offsets, masks, 0.01, 100, 0.0)[0]
    assert out["labels"].tolist() == [2, 1]
    assert out["segments"].tolist() == [[0.0, 2.0], [-3.0, 1.0]]


def test_empty_outputs():
    points, logits, offsets, masks = _random_outputs(2)
    out = decode_candidates(points, logits, offsets, masks, 0.999999, 10, 0.0)
    assert all(len(o["scores"]) == 0 and o["segments"].shape == (0, 2) for o in out)
    assert decode_candidates([], [], [], [], 0.1, 10, 0.0) == []


@pytest.mark.parametrize("backend", ["torch", "cpp", "cuda"])
@pytest.mark.parametrize("name,i", [("tiny_actionformer.pt", 0), ("tiny_actionformer.pt", 1),
                                    ("tiny_fusion.pt", 0)])
def test_golden_detections_with_every_nms_backend(name, i, backend):
    """Our decode + batched_nms_videos (each backend) + TimeGrid reproduce the golden detections."""
    from libs.datasets.timegrid import TimeGrid
    from libs.ops.nms import batched_nms_videos, built_backends
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert backend in built_backends(), f"NMS backend {backend} not built (make ext)"
    g = _golden(name)
    dev = torch.device("cuda" if backend == "cuda" else "cpu")
    cand = {k: v.to(dev) for k, v in _decode_golden(g, i).items()}
    item = g["eval_items"][i]
    (segs, scores, labels), = batched_nms_videos(
        [(cand["segments"], cand["scores"], cand["labels"])], method="gaussian", iou_threshold=0.1,
        min_score=0.001, max_seg_num=500, multiclass=True, sigma=0.4, voting_thresh=0.75,
        backend=backend)
    grid = TimeGrid(float(item["fps"]), float(item["feat_stride"]), float(item["feat_num_frames"]),
                    float(item["duration"]))
    secs = grid.clip_seconds(grid.to_seconds(segs.cpu()))
    det = g["eval"][i]["detections"]
    assert len(scores) == len(det["scores"])
    torch.testing.assert_close(scores.cpu(), det["scores"], rtol=0, atol=1e-5)
    missing = _match(det["segments"].numpy(), det["scores"].numpy(), det["labels"].numpy(),
                     secs.numpy(), scores.cpu().numpy(), labels.cpu().numpy())
    assert missing == [], f"{len(missing)} golden detections not reproduced by {backend}"
