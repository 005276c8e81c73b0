"""A slow plain-Python 1-D NMS (hard, linear and Gaussian soft-NMS, voting): the literal loop
of docs/numerics.md s.7.2-7.3 in numpy float32 scalars, the reference the NMS tests compare every
backend with."""
from __future__ import annotations

import numpy as np

F = np.float32
EPS = F(1e-6)


# ------------------------------------------------------------------------------------------------
# plain-Python reference


def iou(a1, a2, aa, b1, b2, ba):
    inter = max(F(0), min(a2, b2) - max(a1, b1))
    return F(inter / (aa + ba - inter))


def ref_hard(segs, scores, thr, min_score, max_num):
    idx = list(range(len(scores)))
    if min_score > 0:
        idx = [k for k in idx if scores[k] > F(min_score)]
    order = sorted(idx, key=lambda k: -scores[k])  # stable
    area = {k: F(segs[k][1] - segs[k][0]) + EPS for k in idx}
    sel = {k: True for k in order}
    for a, i in enumerate(order):
        if not sel[i]:
            continue
        for j in order[a + 1:]:
            if sel[j] and iou(segs[i][0], segs[i][1], area[i], segs[j][0], segs[j][1], area[j]) >= F(thr):
                sel[j] = False
    kept = [k for k in order if sel[k]]
    kept = kept[:max_num] if max_num > 0 else kept
    return [(k, scores[k]) for k in kept]


def ref_soft(segs, scores, thr, sigma, min_score, method, max_num):
    n = len(scores)
    x1 = [F(s[0]) for s in segs]
    x2 = [F(s[1]) for s in segs]
    sc = [F(s) for s in scores]
    area = [F(x2[k] - x1[k]) + EPS for k in range(n)]
    ind = list(range(n))
    dets = []
    i = 0
    while i < n:
        m, best = i, sc[i]
        for p in range(i + 1, n):
            if best < sc[p]:
                best, m = sc[p], p
        dets.append(sc[m])
        for arr in (x1, x2, sc, area, ind):
            arr[i], arr[m] = arr[m], arr[i]
        p = i + 1
        while p < n:
            ovr = iou(x1[i], x2[i], area[i], x1[p], x2[p], area[p])
            w = F(1)
            if method == 1 and ovr >= F(thr):
                w = F(1) - ovr
            if method == 2:
                w = F(np.exp(-(ovr * ovr) / F(sigma)))
            sc[p] = F(sc[p] * w)
            if sc[p] < F(min_score):
                for arr in (x1, x2, sc, area, ind):
                    arr[p] = arr[n - 1]
                n -= 1
                continue
            p += 1
        i += 1
    out = list(zip(ind[:n], dets[:n]))
    return out[:max_num] if max_num > 0 else out


def ref_voting(kept_segs, all_segs, all_scores, thr):
    out = []
    for k1, k2 in kept_segs:
        num, den = np.zeros(2), 0.0
        for (a1, a2), s in zip(all_segs, all_scores):
            inter = max(0.0, min(k2, a2) - max(k1, a1))
            iou = inter / ((k2 - k1) + (a2 - a1) - inter)
            if iou >= thr:
                num += s * iou * np.array([a1, a2])
                den += s * iou
        out.append(num / den)
    return out


def ref_batched_nms(segs, scores, labels, iou_threshold, min_score, max_seg_num, use_soft_nms,
                    multiclass, sigma, voting_thresh, soft_method="gaussian"):
    """Returns a list of (x1, x2, score, label) in output order."""
    segs = [(F(a), F(b)) for a, b in segs]
    scores = [F(s) for s in scores]
    method = 1 if soft_method == "linear" else 2

    def run(rows):
        s, c = [segs[r] for r in rows], [scores[r] for r in rows]
        if use_soft_nms:
            res = ref_soft(s, c, iou_threshold, sigma, min_score, method, max_seg_num)
        else:
            res = ref_hard(s, c, iou_threshold, min_score, max_seg_num)
        return [(rows[k], sc) for k, sc in res]

    if multiclass:
        out = []
        for c in sorted(set(labels)):
            out += run([r for r in range(len(labels)) if labels[r] == c])
        dets = [(segs[r][0], segs[r][1], sc, labels[r]) for r, sc in out]
    else:
        out = run(list(range(len(labels))))
        new = [segs[r] for r, _ in out]
        if voting_thresh > 0 and out:
            new = ref_voting(new, segs, scores, voting_thresh)
        dets = [(new[k][0], new[k][1], sc, labels[r]) for k, (r, sc) in enumerate(out)]
    dets = sorted(dets, key=lambda d: -d[2])  # stable
    return dets[:max_seg_num] if max_seg_num > 0 else dets
