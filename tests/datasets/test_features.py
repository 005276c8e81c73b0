"""Feature files: .npy / .pt / .h5 reading and cheap checks (docs/numerics.md s.1.2)."""
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from libs.common.errors import UserError
from libs.datasets.features import FeatureProblem, FeatureSource, npy_shape, pt_shape


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {"v1": rng.standard_normal((5, 8)).astype(np.float32),
            "v2": rng.standard_normal((3, 8)).astype(np.float32)}


def _write_all(tmp_path, arrays):
    npy, pt = tmp_path / "npy", tmp_path / "pt"
    npy.mkdir()
    pt.mkdir()
    for vid, a in arrays.items():
        np.save(npy / f"{vid}.npy", a)
        torch.save(torch.from_numpy(a).double(), pt / f"{vid}.pt")
    h5 = tmp_path / "feats.h5"
    with h5py.File(h5, "w") as f:
        for vid, a in arrays.items():
            f.create_dataset(vid, data=a)
    return str(npy), str(pt), str(h5)


def test_read_all_formats(tmp_path, arrays):
    npy, pt, h5 = _write_all(tmp_path, arrays)
    sources = [FeatureSource("a", npy, ".npy", 8), FeatureSource("a", pt, ".pt", 8),
               FeatureSource("a", h5, None, 8)]
    assert sources[2].ext == ".h5" and FeatureSource("a", npy, None, 8).ext == ".npy"
    for src in sources:
        for vid, a in arrays.items():
            x = src.read(vid)
            assert x.dtype == np.float32 and x.shape == a.shape
            np.testing.assert_allclose(x, a, rtol=0, atol=1e-7)
        assert src.problems(list(arrays)) == []
        assert src.shape("v2") == (3, 8)


def test_h5_opened_lazily_and_not_pickled(tmp_path, arrays):
    _, _, h5 = _write_all(tmp_path, arrays)
    src = FeatureSource("a", h5, ".h5", 8)
    assert src._h5 is None
    src.read("v1")
    assert src._h5 is not None and src._h5_pid == os.getpid()
    clone = pickle.loads(pickle.dumps(src))
    assert clone._h5 is None
    np.testing.assert_array_equal(clone.read("v2"), arrays["v2"])
    src.close()
    assert src._h5 is None


def test_problems_missing_unreadable_shape(tmp_path, arrays):
    npy, _, _ = _write_all(tmp_path, arrays)
    np.save(os.path.join(npy, "flat.npy"), np.zeros(8, np.float32))
    np.save(os.path.join(npy, "wide.npy"), np.zeros((4, 9), np.float32))
    np.save(os.path.join(npy, "empty.npy"), np.zeros((0, 8), np.float32))
    with open(os.path.join(npy, "junk.npy"), "wb") as f:
        f.write(b"not a numpy file")
    src = FeatureSource("audio", npy, ".npy", 8)
    probs = src.check(["v1", "gone", "flat", "wide", "empty", "junk"])
    kinds = {p.video_id: p.kind for p in probs}
    assert kinds == {"gone": "missing", "flat": "shape", "wide": "shape", "empty": "shape",
                     "junk": "unreadable"}
    msgs = {p.video_id: str(p) for p in probs}
    assert "gone.npy" in msgs["gone"] and "video 'gone'" in msgs["gone"] and "'audio'" in msgs["gone"]
    assert "(4, 9)" in msgs["wide"] and "8" in msgs["wide"]
    with pytest.raises(FeatureProblem, match="missing feature file"):
        src.read("gone")
    with pytest.raises(UserError, match="bad feature shape"):
        src.read("wide")


def test_pt_not_a_tensor_and_h5_missing(tmp_path, arrays):
    _, pt, h5 = _write_all(tmp_path, arrays)
    torch.save({"x": torch.zeros(2, 8)}, os.path.join(pt, "dict.pt"))
    src = FeatureSource("video", pt, ".pt", 8)
    (prob,) = src.check(["dict"])
    assert prob.kind == "unreadable" and "expected a tensor" in str(prob)
    h5src = FeatureSource("video", h5, ".h5", 8)
    (prob,) = h5src.check(["v9"])
    assert prob.kind == "missing" and "v9" in str(prob)
    absent = FeatureSource("video", str(tmp_path / "absent.h5"), ".h5", 8)
    assert absent.problems(["v1", "v2"]) == [f"feature file not found (modality 'video'): "
                                             f"{tmp_path / 'absent.h5'}"]


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_shape_reads_the_header_of_every_format_version(tmp_path, version):
    arr = np.zeros((7, 5), dtype=np.float32)
    fname = tmp_path / "v.npy"
    with open(fname, "wb") as f:
        np.lib.format.write_array(f, arr, version=version)
    assert npy_shape(str(fname)) == (7, 5)


def test_shapes_are_read_once_per_source(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((4, 3), dtype=np.float32))
    src = FeatureSource("m", str(tmp_path), ".npy", 3)
    calls = []
    real = src._read_shape
    monkeypatch.setattr(src, "_read_shape", lambda vid: calls.append(vid) or real(vid))
    assert src.check(["a"]) == []
    assert src.shape("a") == (4, 3)
    assert calls == ["a"]                 # the check's header read serves later shape() calls
    assert src.check(["b"])[0].kind == "missing" and "b" not in src._shapes


@pytest.mark.parametrize("content, expected", [
    (torch.zeros(6, 4), (6, 4)),
    (torch.zeros(3, 8)[:, :4], (3, 4)),                       # a view: stride and offset ignored
    (torch.zeros(5, 2, dtype=torch.float16), (5, 2)),
])
def test_pt_shape_from_the_pickle_record(tmp_path, monkeypatch, content, expected):
    fname = tmp_path / "v.pt"
    torch.save(content, fname)
    monkeypatch.setattr(torch, "load", None)          # the plain-tensor path never loads
    assert pt_shape(str(fname)) == expected


def test_pt_shape_falls_back_to_torch_load(tmp_path):
    torch.save({"x": torch.zeros(2, 2)}, tmp_path / "d.pt")
    with pytest.raises(TypeError, match="holds a dict, expected a tensor"):
        pt_shape(str(tmp_path / "d.pt"))
    torch.save(torch.nn.Parameter(torch.zeros(4, 3)), tmp_path / "p.pt")
    assert pt_shape(str(tmp_path / "p.pt")) == (4, 3)
    torch.save(torch.zeros(7, 3), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert pt_shape(str(tmp_path / "legacy.pt")) == (7, 3)
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(Exception):
        pt_shape(str(tmp_path / "junk.pt"))


def test_pt_shape_through_the_zip_index_when_the_record_is_not_first(tmp_path, monkeypatch):
    import zipfile
    torch.save(torch.zeros(9, 4), tmp_path / "v.pt")
    with zipfile.ZipFile(tmp_path / "v.pt") as src:
        entries = [(n, src.read(n)) for n in src.namelist()]
    with zipfile.ZipFile(tmp_path / "r.pt", "w", zipfile.ZIP_STORED) as dst:
        for n, data in sorted(entries, key=lambda e: e[0].endswith("data.pkl")):  # record last
            dst.writestr(n, data)
    assert torch.equal(torch.load(tmp_path / "r.pt", weights_only=True), torch.zeros(9, 4))
    monkeypatch.setattr(torch, "load", None)
    assert pt_shape(str(tmp_path / "r.pt")) == (9, 4)
