"""NMS backends (torch fallback, compiled C++, CUDA) against a slow plain-Python reference.

The reference (tests/ops/nms_reference.py) is the literal loop of docs/numerics.md s.7.2 in numpy
float32 scalars. The compiled extension is built once per session if it is missing
(set NMS_TEST_NO_BUILD=1 to skip that); CUDA cases run only with a GPU and a CUDA build
(NMS_REQUIRE_CUDA=1 turns their skip into a failure).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.common.errors import UserError
from libs.ops import nms as nms_mod
from libs.ops.nms import BUILD_COMMAND
from nms_reference import EPS, F, iou, ref_batched_nms


def _lib_kw(kw: dict) -> dict:
    """The reference's (use_soft_nms, soft_method) pair -> the library's ``method``."""
    kw = dict(kw)
    soft, soft_method = kw.pop("use_soft_nms"), kw.pop("soft_method", "gaussian")
    kw["method"] = soft_method if soft else "hard"
    kw.setdefault("backend", "auto")
    return kw


def batched_nms(*args, **kw):
    return nms_mod.batched_nms(*args, **_lib_kw(kw))


def batched_nms_videos(items, **kw):
    return nms_mod.batched_nms_videos(items, **_lib_kw(kw))

ROOT = Path(__file__).resolve().parents[2]
# ------------------------------------------------------------------------------------------------
# backends


@pytest.fixture(scope="session")
def ext_built() -> bool:
    """Build the extension in place once if it is missing (so CI covers the C++ kernel)."""
    if nms_mod._load_extension() is None and os.environ.get("NMS_TEST_NO_BUILD", "") in ("", "0"):
        proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"building the NMS extension failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        nms_mod._ext_tried = False
    return nms_mod._load_extension() is not None


@pytest.fixture(params=["torch", "cpp", "cuda"])
def backend(request, ext_built) -> str:
    name = request.param
    if name == "cpp" and not ext_built:
        pytest.skip("NMS extension not built")
    if name == "cuda" and "cuda" not in nms_mod.built_backends():
        if os.environ.get("NMS_REQUIRE_CUDA", "") not in ("", "0"):  # benchmarks/gpu_check.sh
            pytest.fail("NMS_REQUIRE_CUDA is set but the CUDA backend is not available")
        pytest.skip("no GPU or no CUDA build of the NMS extension")
    return name


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def _run(backend, segs, scores, labels, **kw):
    dev = _device(backend)
    out = batched_nms(torch.tensor(segs, dtype=torch.float32, device=dev).reshape(-1, 2),
                      torch.tensor(scores, dtype=torch.float32, device=dev),
                      torch.tensor(labels, dtype=torch.long, device=dev), backend=backend, **kw)
    for t in out:
        assert t.device.type == dev
    return [t.cpu() for t in out]


def _assert_matches(out, ref, atol_seg=0.0):
    segs, scores, labels = out
    assert segs.dtype == torch.float32 and scores.dtype == torch.float32 and labels.dtype == torch.long
    assert len(scores) == len(ref), (scores, ref)
    if not ref:
        return
    ref_scores = np.array([d[2] for d in ref], dtype=np.float64)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5, rtol=0)
    # same kept set: match rows as multisets (order may differ only among equal scores)
    got = list(zip(labels.tolist(), segs[:, 0].tolist(), segs[:, 1].tolist(), scores.tolist()))
    for d in ref:
        hit = [k for k, g in enumerate(got) if g[0] == int(d[3]) and abs(g[1] - d[0]) <= atol_seg
               and abs(g[2] - d[1]) <= atol_seg and abs(g[3] - d[2]) <= 1e-5]
        assert hit, (d, got)
        got.pop(hit[0])


SEED_SEGS = [[0, 10], [1, 11], [20, 30], [0, 10], [2, 9]]
SEED_SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
SEED_LABELS = [0, 0, 0, 1, 0]
SEED_KW = dict(iou_threshold=0.1, min_score=0.001, max_seg_num=100, multiclass=True, sigma=0.4,
               voting_thresh=0.0)


def test_seed_vector_soft(backend):
    segs, scores, labels = _run(backend, SEED_SEGS, SEED_SCORES, SEED_LABELS, use_soft_nms=True,
                                **SEED_KW)
    assert segs.tolist() == [[0, 10], [20, 30], [0, 10], [1, 11], [2, 9]]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.1501, 0.0431], abs=5e-5)
    assert labels.tolist() == [0, 0, 1, 0, 0]


def test_seed_vector_hard(backend):
    segs, scores, labels = _run(backend, SEED_SEGS, SEED_SCORES, SEED_LABELS, use_soft_nms=False,
                                **SEED_KW)
    assert segs.tolist() == [[0, 10], [20, 30], [0, 10]]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert labels.tolist() == [0, 0, 1]


def _random_case(rng: np.random.Generator):
    n = int(rng.choice([0, 1, 2, 5, 20, 40, 60]))
    x1 = rng.integers(0, 60, n) * 0.5  # coarse grid: repeated starts and identical segments
    length = rng.choice([0.5, 1.0, 3.0, 7.5, 15.0], n) * rng.choice([1.0, 1.1], n)
    segs = np.stack([x1, x1 + length], 1).tolist() if n else []
    tied = rng.choice([0.9, 0.5, 0.25, 0.05], n)
    scores = np.where(rng.random(n) < 0.5, tied, rng.random(n)).astype(np.float32).tolist()
    labels = rng.integers(0, int(rng.integers(1, 4)), n).tolist()
    use_soft = bool(rng.random() < 0.7)
    multiclass = bool(rng.random() < 0.5)
    kw = dict(iou_threshold=float(rng.choice([0.1, 0.3, 0.5, 0.7])),
              min_score=float(rng.choice([0.0, 0.001, 0.05, 0.3])),
              max_seg_num=int(rng.choice([3, 10, 100])), use_soft_nms=use_soft,
              multiclass=multiclass, sigma=float(rng.choice([0.1, 0.4, 0.9])),
              voting_thresh=0.0 if multiclass else float(rng.choice([0.0, 0.5, 0.75])),
              soft_method=str(rng.choice(["gaussian", "linear"])))
    return segs, scores, labels, kw


def test_random_cases_match_reference(backend):
    rng = np.random.default_rng(1234)
    for case in range(200):
        segs, scores, labels, kw = _random_case(rng)
        ref = ref_batched_nms(segs, scores, labels, **kw)
        out = _run(backend, segs, scores, labels, **kw)
        try:
            _assert_matches(out, ref, atol_seg=1e-4 if kw["voting_thresh"] > 0 else 0.0)
        except AssertionError as err:
            raise AssertionError(f"case {case}: {kw}, n={len(scores)}") from err


EDGE_CASES = {
    "empty": ([], [], [], dict(use_soft_nms=True)),
    "one_below_min_score_soft": ([[1, 2]], [0.0005], [3], dict(use_soft_nms=True)),
    "one_below_min_score_hard": ([[1, 2]], [0.0005], [3], dict(use_soft_nms=False)),
    "all_identical_hard": ([[4, 9]] * 7, [0.3, 0.9, 0.3, 0.5, 0.9, 0.1, 0.3], [0] * 7,
                           dict(use_soft_nms=False)),
    "all_identical_soft": ([[4, 9]] * 7, [0.3, 0.9, 0.3, 0.5, 0.9, 0.1, 0.3], [0] * 7,
                           dict(use_soft_nms=True)),
    "min_score_equal_soft": ([[0, 1], [5, 6]], [0.9, 0.25], [0, 0],
                             dict(use_soft_nms=True, min_score=0.25)),
    "min_score_equal_hard": ([[0, 1], [5, 6]], [0.9, 0.25], [0, 0],
                             dict(use_soft_nms=False, min_score=0.25)),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
@pytest.mark.parametrize("multiclass", [True, False])
def test_edge_cases(backend, name, multiclass):
    segs, scores, labels, extra = EDGE_CASES[name]
    kw = dict(iou_threshold=0.5, min_score=0.001, max_seg_num=100, multiclass=multiclass,
              sigma=0.4, voting_thresh=0.0)
    kw.update(extra)
    out = _run(backend, segs, scores, labels, **kw)
    _assert_matches(out, ref_batched_nms(segs, scores, labels, **kw))
    if name == "all_identical_hard":
        assert out[1].tolist() == pytest.approx([0.9])
    if name == "one_below_min_score_soft":  # the first pick is never tested against min_score
        assert len(out[1]) == 1
    if name.startswith("min_score_equal"):  # soft keeps score == min_score, hard drops it
        assert len(out[1]) == (2 if "soft" in name else 1)


@pytest.mark.parametrize("soft_method", ["hard", "linear"])
def test_pair_exactly_at_threshold(backend, soft_method):
    segs = [[0.0, 10.0], [4.0, 13.0], [30.0, 31.0]]
    a = F(10) + EPS
    b = F(9) + EPS
    thr = float(iou(F(0), F(10), a, F(4), F(13), b))  # the float32 IoU of the pair
    kw = dict(iou_threshold=thr, min_score=0.0, max_seg_num=10, multiclass=True, sigma=0.4,
              voting_thresh=0.0, use_soft_nms=soft_method != "hard",
              soft_method="linear" if soft_method == "linear" else "gaussian")
    out = _run(backend, segs, [0.9, 0.8, 0.7], [0, 0, 0], **kw)
    _assert_matches(out, ref_batched_nms(segs, [0.9, 0.8, 0.7], [0, 0, 0], **kw))
    if soft_method == "hard":  # IoU >= threshold suppresses
        assert out[0].tolist() == [[0.0, 10.0], [30.0, 31.0]]
    else:  # linear decays it by 1 - IoU
        assert out[1].tolist() == pytest.approx([0.9, 0.7, 0.8 * (1 - thr)], abs=1e-6)
    kw["iou_threshold"] = float(np.nextafter(F(thr), F(1)))  # just above: no longer suppressed
    out = _run(backend, segs, [0.9, 0.8, 0.7], [0, 0, 0], **kw)
    assert out[1].tolist() == pytest.approx([0.9, 0.8, 0.7])


def _make_videos(rng, nv, n, ncls):
    items = []
    for _ in range(nv):
        m = int(rng.integers(0, n))
        x1 = rng.integers(0, 200, m) * 0.25
        segs = torch.tensor(np.stack([x1, x1 + rng.choice([0.5, 2.0, 6.0], m)], 1), dtype=torch.float32)
        sc = np.where(rng.random(m) < 0.3, rng.choice([0.5, 0.05], m), rng.random(m))
        items.append((segs.reshape(-1, 2), torch.tensor(sc, dtype=torch.float32),
                      torch.tensor(rng.integers(0, ncls, m), dtype=torch.long)))
    return items


@pytest.mark.parametrize("use_soft,multiclass", [(True, True), (True, False), (False, True)])
def test_videos_equal_per_video(backend, use_soft, multiclass):
    rng = np.random.default_rng(7)
    dev = _device(backend)
    items = [tuple(t.to(dev) for t in it) for it in _make_videos(rng, 6, 80, 4)]
    kw = dict(iou_threshold=0.3, min_score=0.01, max_seg_num=25, use_soft_nms=use_soft,
              multiclass=multiclass, sigma=0.4, voting_thresh=0.0 if multiclass else 0.7,
              backend=backend)
    batch = batched_nms_videos(items, **kw)
    assert len(batch) == len(items)
    for it, got in zip(items, batch):
        one = batched_nms(*it, **kw)
        for a, b in zip(got, one):
            assert torch.equal(a, b)


def test_large_groups_cpp_torch_cuda_agree(ext_built):
    """Groups larger than one CUDA block (256) with many removals and ties."""
    if not ext_built:
        pytest.skip("NMS extension not built")
    rng = np.random.default_rng(3)
    items = _make_videos(rng, 3, 700, 2)
    backends = ["cpp", "torch"] + (["cuda"] if "cuda" in nms_mod.built_backends() else [])
    for soft in (True, False):
        kw = dict(iou_threshold=0.3, min_score=0.2, max_seg_num=0, use_soft_nms=soft,
                  multiclass=True, sigma=0.9, voting_thresh=0.0)
        res = {}
        for b in backends:
            dev = _device(b)
            res[b] = [[t.cpu() for t in o] for o in
                      batched_nms_videos([tuple(t.to(dev) for t in it) for it in items], **kw, backend=b)]
        for b in backends[1:]:
            for x, y in zip(res["cpp"], res[b]):
                if soft and b == "cuda":
                    # CUDA's expf may differ from the CPU's by an ulp, which can reorder
                    # near-equal decayed scores: compare the kept sets, not their order
                    x, y = (_rows_sorted(*o) for o in (x, y))
                assert torch.equal(x[0], y[0]) and torch.equal(x[2], y[2]), b
                torch.testing.assert_close(x[1], y[1], atol=1e-5, rtol=0)


def _rows_sorted(segs, scores, labels):
    """Kept detections in a canonical order (label, start, end)."""
    key = labels.double() * 1e8 + segs[:, 0].double() * 1e3 + segs[:, 1].double()
    order = torch.argsort(key, stable=True)
    return segs[order], scores[order], labels[order]


# ------------------------------------------------------------------------------------------------
# dispatch, errors, fallback


def test_missing_extension_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "libs.ops._nms_ext", None)  # import now raises ImportError
    monkeypatch.setattr(nms_mod, "_ext_tried", False)
    monkeypatch.setattr(nms_mod, "_ext", None)
    monkeypatch.setattr(nms_mod, "_warned", False)
    caplog.set_level(logging.WARNING, logger="libs.ops.nms")
    for _ in range(3):
        segs, scores, labels = _run("auto", SEED_SEGS, SEED_SCORES, SEED_LABELS,
                                    use_soft_nms=True, **SEED_KW)
        assert len(scores) == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and BUILD_COMMAND in warnings[0].getMessage()
    cpu = (torch.tensor(SEED_SEGS, dtype=torch.float32), torch.tensor(SEED_SCORES),
           torch.tensor(SEED_LABELS))
    for name in ("cpp", "cuda"):
        with pytest.raises(UserError, match="build_ext --inplace"):
            batched_nms(*cpu, use_soft_nms=True, **SEED_KW, backend=name)
    assert nms_mod.built_backends() == ("torch",)
    monkeypatch.setattr(nms_mod, "_ext_tried", False)  # let later tests load the real one


def test_import_without_extension_in_fresh_process():
    code = ("import sys; sys.modules['libs.ops._nms_ext'] = None\n"
            "import libs.ops.nms as m; print(m.built_backends())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "('torch',)" in proc.stdout


def test_cuda_backend_needs_cuda_tensors(ext_built):
    if not ext_built:
        pytest.skip("NMS extension not built")
    cpu = (torch.tensor(SEED_SEGS, dtype=torch.float32), torch.tensor(SEED_SCORES),
           torch.tensor(SEED_LABELS))
    match = "CUDA device" if nms_mod._load_extension().with_cuda() else "without CUDA"
    with pytest.raises(UserError, match=match):
        batched_nms(*cpu, use_soft_nms=True, **SEED_KW, backend="cuda")


def test_bad_inputs():
    ok = (torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    kw = dict(iou_threshold=0.5, min_score=0.0, max_seg_num=5, use_soft_nms=True,
              multiclass=True, sigma=0.4, voting_thresh=0.0, backend="torch")
    with pytest.raises(ValueError, match="segs \\(N, 2\\)"):
        batched_nms(torch.zeros(2, 3), ok[1], ok[2], **kw)
    with pytest.raises(ValueError, match="finite"):
        batched_nms(ok[0], torch.tensor([0.1, float("nan")]), ok[2], **kw)
    with pytest.raises(ValueError, match="integer"):
        batched_nms(ok[0], ok[1], ok[1], **kw)
    with pytest.raises(ValueError, match="unknown NMS backend"):
        batched_nms(*ok, **{**kw, "backend": "gpu"})
    with pytest.raises(ValueError, match="unknown NMS method 'box'"):
        batched_nms(*ok, **kw, soft_method="box")


def test_cpp_kernel_checks(ext_built):
    if not ext_built:
        pytest.skip("NMS extension not built")
    ext = nms_mod._load_extension()
    segs, scores, off = torch.zeros(3, 2), torch.zeros(3), torch.tensor([0, 3])
    with pytest.raises(RuntimeError, match="shape \\(N, 2\\)"):
        ext.nms_groups(torch.zeros(3), scores, off, 0.5, 0.0, 0.4, 2, 0)
    with pytest.raises(RuntimeError, match="float32"):
        ext.nms_groups(segs.double(), scores, off, 0.5, 0.0, 0.4, 2, 0)
    with pytest.raises(RuntimeError, match="end at N"):
        ext.nms_groups(segs, scores, torch.tensor([0, 2]), 0.5, 0.0, 0.4, 2, 0)
    with pytest.raises(RuntimeError, match="method"):
        ext.nms_groups(segs, scores, off, 0.5, 0.0, 0.4, 7, 0)
    with pytest.raises(RuntimeError, match="sorted by descending"):
        ext.nms_groups(segs, torch.tensor([0.1, 0.2, 0.3]), off, 0.5, 0.0, 0.4, 0, 0)


def test_empty_batch_and_dtypes():
    out = batched_nms(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.int32),
                      iou_threshold=0.5, min_score=0.001, max_seg_num=10, use_soft_nms=True,
                      multiclass=True, sigma=0.4, voting_thresh=0.0)
    assert out[0].shape == (0, 2) and out[0].dtype == torch.float32
    assert out[1].shape == (0,) and out[2].dtype == torch.long
    assert batched_nms_videos([], iou_threshold=0.5, min_score=0.001, max_seg_num=10,
                              use_soft_nms=True, multiclass=True, sigma=0.4, voting_thresh=0.0) == []
