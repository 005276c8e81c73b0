"""External class-score fusion (libs/evaluation/ext_scores.py, docs/numerics.md s.7.5)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from libs.common.errors import UserError
from libs.evaluation.ext_scores import apply_ext_scores, check_ext_coverage, fuse_video, load_ext_scores

SEGS = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], dtype=np.float32)
SCORES = np.array([0.25, 1.0, 0.04])
CLASS_SCORES = [0.09, 0.64, 0.16]   # top-2 classes: 1 (0.64), then 2 (0.16)


def _write(tmp_path, obj, name="ext.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _det(vid="v1", segs=SEGS, scores=SCORES, labels=None):
    labels = np.zeros(len(scores), dtype=np.int64) if labels is None else labels
    return {"video_id": vid, "segments": segs, "scores": scores, "labels": labels}


def test_hand_computed_fusion():
    out = apply_ext_scores([_det()], {"v1": np.array(CLASS_SCORES)}, topk=2, num_pred=200)
    assert len(out) == 1 and out[0]["video_id"] == "v1"
    d = out[0]
    # class-major rows: class 1 x (s1, s0, s2) = .8, .4, .16; class 2 x (s1, s0, s2) = .4, .2, .08;
    # then a stable descending sort (the .4 tie keeps class 1 first).
    np.testing.assert_allclose(d["scores"], [0.8, 0.4, 0.4, 0.2, 0.16, 0.08], rtol=1e-12)
    np.testing.assert_array_equal(d["labels"], [1, 1, 2, 2, 1, 2])
    np.testing.assert_array_equal(d["segments"], SEGS[[1, 0, 1, 0, 2, 2]])
    assert d["scores"].dtype == np.float64 and d["labels"].dtype == np.int64
    assert d["segments"].dtype == np.float32
    assert d["scores"][1] == math.sqrt(0.64 * 0.25)  # float64 arithmetic


def test_num_pred_and_topk():
    out = apply_ext_scores([_det()], {"v1": np.array(CLASS_SCORES)}, topk=1, num_pred=2)[0]
    np.testing.assert_allclose(out["scores"], [0.8, 0.4])
    np.testing.assert_array_equal(out["labels"], [1, 1])
    np.testing.assert_array_equal(out["segments"], SEGS[[1, 0]])
    out3 = apply_ext_scores([_det()], {"v1": np.array(CLASS_SCORES)}, topk=3, num_pred=1)[0]
    np.testing.assert_allclose(out3["scores"], [0.8, 0.4, 0.3])
    np.testing.assert_array_equal(out3["labels"], [1, 2, 0])


def test_stable_tie_order_of_segments_and_classes():
    segs, scores, labels = fuse_video(SEGS, np.array([0.5, 0.5, 0.5]), np.array([0.2, 0.2, 0.1]),
                                      topk=2, num_pred=2)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(segs, SEGS[[0, 1, 0, 1]])


def test_torch_inputs_empty_video_and_extra_keys():
    dets = [{"video_id": "a", "segments": torch.from_numpy(SEGS), "scores": torch.tensor(SCORES,
             dtype=torch.float32), "labels": torch.zeros(3, dtype=torch.long), "extra": 7},
            _det("b", np.zeros((0, 2), np.float32), np.zeros(0))]
    out = apply_ext_scores(dets, {"a": np.array(CLASS_SCORES), "b": np.array(CLASS_SCORES)})
    assert [d["video_id"] for d in out] == ["a", "b"] and out[0]["extra"] == 7
    np.testing.assert_allclose(out[0]["scores"][0], math.sqrt(0.64 * np.float32(1.0)))
    assert out[1]["segments"].shape == (0, 2) and out[1]["scores"].shape == (0,)
    assert dets[0]["labels"].sum() == 0  # input untouched


def test_missing_videos_listed():
    dets = [_det(f"v{i}") for i in range(25)]
    with pytest.raises(UserError) as err:
        apply_ext_scores(dets, {"v0": np.array(CLASS_SCORES)})
    msg = str(err.value)
    assert "24 video(s)" in msg and "'v1'" not in msg and "v1;" in msg and "(and 4 more)" in msg
    assert "test_cfg.ext_score_file" in msg
    check_ext_coverage({"a": np.ones(3)}, ["a"])  # no error


def test_topk_above_classes():
    with pytest.raises(UserError, match="ext_score_topk"):
        apply_ext_scores([_det()], {"v1": np.array(CLASS_SCORES)}, topk=4)


def test_load_plain_and_results_wrapper(tmp_path):
    plain = load_ext_scores(_write(tmp_path, {"v1": CLASS_SCORES, "v2": [0, 1, 2]}), 3)
    assert set(plain) == {"v1", "v2"} and plain["v2"].dtype == np.float64
    np.testing.assert_array_equal(plain["v1"], CLASS_SCORES)
    wrapped = load_ext_scores(_write(tmp_path, {"results": {"v1": CLASS_SCORES}}, "w.json"), 3)
    np.testing.assert_array_equal(wrapped["v1"], CLASS_SCORES)
    out = apply_ext_scores([_det()], wrapped)
    np.testing.assert_allclose(out[0]["scores"][0], 0.8)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "top level is a list"),
    ("{}", "no videos"),
    ({"v1": [0.1, 0.2]}, "video 'v1': 2 scores"),
    ({"v1": [0.1, "x", 0.3]}, "video 'v1': score 1 is 'x'"),
    ({"v1": [0.1, -0.2, 0.3]}, "video 'v1': score 1 is -0.2"),
    ('{"v1": [0.1, NaN, 0.3]}', "video 'v1': score 1 is nan"),
    ({"v1": [True, 0.2, 0.3]}, "video 'v1': score 0 is True"),
    ({"v1": {"a": 1}}, "video 'v1': scores are a dict"),
    ({"results": {"v1": [1, 2]}}, "video 'v1': 2 scores"),
])
def test_load_errors(tmp_path, content, needle):
    path = _write(tmp_path, content)
    with pytest.raises(UserError) as err:
        load_ext_scores(path, 3)
    assert needle in str(err.value) and path in str(err.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_ext_scores(str(tmp_path / "nope.json"), 3)
