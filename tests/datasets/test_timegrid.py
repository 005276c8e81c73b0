"""Seconds <-> grid cells in both modes (docs/numerics.md, time grid)."""
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from libs.common.errors import UserError
from libs.config.schema import DatasetConfig
from libs.datasets.timegrid import TimeGrid, make_time_grid


def _cfg(**kw):
    cfg = {"time_grid": "duration", "force_upsampling": True, "max_seq_len": 192, "fps": 768.0,
           "feat_stride": 16.0, "num_frames": 16.0}
    cfg.update(kw)
    return dataclasses.replace(DatasetConfig(), **cfg)


def test_stride_mode_force_upsampling_is_case_2():
    g = make_time_grid(_cfg(time_grid="stride"), t_primary=100, duration=10.0)
    stride = (99 * 16 + 16) / 192
    assert g.fps == 768.0 and g.feat_stride == pytest.approx(stride) and g.num_frames == g.feat_stride
    assert g.offset == pytest.approx(0.5)
    # grid = seconds * fps / stride - 0.5
    assert g.to_grid(2.0) == pytest.approx(2.0 * 768 / stride - 0.5)


def test_stride_mode_without_upsampling_is_case_1():
    g = make_time_grid(_cfg(time_grid="stride", force_upsampling=False, fps=15.0, feat_stride=2.0,
                            num_frames=4.0), t_primary=50, duration=10.0)
    assert (g.fps, g.feat_stride, g.num_frames) == (15.0, 2.0, 4.0)
    assert g.offset == 1.0
    assert g.to_grid(1.0) == pytest.approx(1.0 * 15 / 2 - 0.5 * 4 / 2)


def test_duration_mode():
    g = make_time_grid(_cfg(), t_primary=77, duration=30.0)
    assert g.to_grid(0.0) == pytest.approx(-0.5)
    assert g.to_grid(30.0) == pytest.approx(191.5)
    assert g.to_grid(15.0) == pytest.approx(15.0 / 30.0 * 192 - 0.5)
    g2 = make_time_grid(_cfg(force_upsampling=False), t_primary=77, duration=30.0)
    assert g2.to_grid(30.0) == pytest.approx(76.5)


@pytest.mark.parametrize("mode", ["duration", "stride"])
@pytest.mark.parametrize("np_dtype,th_dtype", [(np.float64, torch.float64), (np.float32, torch.float32)])
def test_round_trip_keeps_dtype(mode, np_dtype, th_dtype):
    g = make_time_grid(_cfg(time_grid=mode), t_primary=1503, duration=31.27)
    secs = np.linspace(0.0, 31.27, 101).astype(np_dtype)
    grid = g.to_grid(secs)
    back = g.to_seconds(grid)
    assert grid.dtype == np_dtype and back.dtype == np_dtype
    assert np.abs(back.astype(np.float64) - secs.astype(np.float64)).max() < 1e-5
    t = torch.from_numpy(secs.copy()).to(th_dtype)
    tb = g.to_seconds(g.to_grid(t))
    assert tb.dtype == th_dtype
    assert (tb.double() - t.double()).abs().max().item() < 1e-5


def test_to_seconds_uses_reference_float_order():
    g = TimeGrid(fps=768.0, feat_stride=125.3, num_frames=125.3, duration=30.0)
    x = np.array([3.7, 100.1], dtype=np.float32)
    expected = (x * np.float32(125.3) + np.float32(0.5 * 125.3)) / np.float32(768.0)
    np.testing.assert_array_equal(g.to_seconds(x), expected)


def test_clip_seconds():
    g = TimeGrid(fps=6.4, feat_stride=1.0, num_frames=1.0, duration=30.0)
    np.testing.assert_array_equal(g.clip_seconds(np.array([-1.0, 5.0, 31.0])), [0.0, 5.0, 30.0])
    assert g.clip_seconds(torch.tensor([-1.0, 31.0])).tolist() == [0.0, 30.0]
    assert g.clip_seconds(40.0) == 30.0


def test_pickle_and_errors():
    g = make_time_grid(_cfg(), 10, 5.0)
    assert pickle.loads(pickle.dumps(g)) == g
    with pytest.raises(AssertionError):      # a config without fps is refused at load
        make_time_grid(_cfg(time_grid="stride", fps=None), 10, 5.0)
    with pytest.raises(UserError, match="duration"):
        make_time_grid(_cfg(), 10, 0.0)
