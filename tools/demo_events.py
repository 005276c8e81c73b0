"""Events of the synthetic demo dataset (and the parameters of its generator): how many sounds
and actions a video has, how long, where, and which overlap. Used by ``tools/demo_signal.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class SignalParams:
    """Knobs of the synthetic signal. Feature noise has unit variance per channel; amplitudes are
    per-channel RMS of a prototype at full envelope (so SNR per row ~ amplitude x sqrt(dim))."""

    pair_shared: float = 0.65             # cosine similarity of the two classes of a pair
    instance_noise: float = 0.35          # per-event deviation from the class prototype (relative)
    amplitude_range: Tuple[float, float] = (0.6, 1.4)  # per-event amplitude factor
    # audio (BEATs-like)
    audio_amplitude: float = 0.7
    audio_noise: float = 1.0
    audio_onset_s: float = 0.06           # sigmoid time constant of onsets/offsets
    audio_slow: float = 0.15              # slowly varying background component (RMS)
    audio_offset: float = 0.10            # per-video constant offset (RMS)
    audio_mean: float = 0.30              # dataset-wide mean (real features are not centred)
    audio_modulation_depth: Tuple[float, float] = (0.0, 0.6)
    audio_modulation_hz: Tuple[float, float] = (0.7, 4.0)
    distractors: Tuple[int, int] = (0, 2)  # unlabelled sound-like events per video
    # video (UMT-like and VideoMAE-like)
    umt_amplitude: float = 0.22
    umt_sound_hint: float = 0.2          # visible sounds in UMT, relative to umt_amplitude
    videomae_amplitude: float = 0.1
    videomae_jitter_s: float = 0.3        # VideoMAE boundaries are shifted by up to this
    video_noise: float = 1.0
    videomae_noise: float = 1.25
    video_onset_s: float = 0.25
    video_slow: float = 0.15
    video_offset: float = 0.10
    video_mean: float = 0.30
    # events
    sound_count: Tuple[int, int] = (2, 6)
    sound_length_s: Tuple[float, float] = (0.5, 5.0)
    action_count: Tuple[int, int] = (2, 5)
    action_length_s: Tuple[float, float] = (1.0, 8.0)
    max_fill: float = 0.8                 # events (before the overlap) cover at most this much
    min_gap_s: float = 0.2
    p_overlap: float = 0.25               # per video and task: one extra overlapping event
    p_same_class_pair: float = 0.12       # per video and task: two nearby events of one class


PARAMS = SignalParams()


# ------------------------------------------------------------------------------------------------
# Events
# ------------------------------------------------------------------------------------------------
@dataclass
class Event:
    start: float  # seconds
    end: float    # seconds
    label: int


def sample_events(rng: np.random.Generator, duration: float, num_classes: int,
                  count: Tuple[int, int], length_s: Tuple[float, float],
                  params: SignalParams = PARAMS) -> List[Event]:
    """Events of one task list in a ``duration``-second video, sorted by start.

    Base events do not overlap (gaps >= ``min_gap_s``); with probability ``p_overlap`` one extra
    event of a class different from everything it overlaps is added, and with probability
    ``p_same_class_pair`` two consecutive events get the same class and a short gap.
    """
    lo_n, hi_n = count
    add_overlap = rng.random() < params.p_overlap
    same_pair = rng.random() < params.p_same_class_pair
    n = int(rng.integers(lo_n, hi_n + 1))
    if add_overlap and n == hi_n:
        n -= 1
    lmin, lmax = length_s
    lmax_eff = max(min(lmax, 0.45 * duration), min(lmin, 0.3 * duration))
    lmin_eff = min(lmin, lmax_eff)
    # log-uniform lengths: short events are common, long ones exist
    lengths = np.exp(rng.uniform(np.log(lmin_eff), np.log(lmax_eff), n))
    budget = params.max_fill * duration
    while n > 1 and lengths.sum() + (n - 1) * params.min_gap_s > budget and n > lo_n:
        lengths = lengths[:-1]
        n -= 1
    excess = lengths.sum() + (n - 1) * params.min_gap_s - budget
    if excess > 0:  # still too long (short video): shrink
        lengths *= max(0.1, (budget - (n - 1) * params.min_gap_s)) / lengths.sum()
    free = duration - lengths.sum() - (n - 1) * params.min_gap_s
    gaps = rng.dirichlet(np.ones(n + 1)) * max(free, 0.0)
    gaps[1:-1] += params.min_gap_s
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths[:-1])])
    ends = starts + lengths
    labels = rng.integers(0, num_classes, n)

    if same_pair and n >= 2:
        i = int(rng.integers(0, n - 1))
        labels[i + 1] = labels[i]
        gap = rng.uniform(0.2, 0.8)
        shift = starts[i + 1] - (ends[i] + gap)
        if shift > 0:
            starts[i + 1] -= shift
            ends[i + 1] -= shift

    events = [Event(float(s), float(e), int(c)) for s, e, c in zip(starts, ends, labels)]
    if add_overlap:
        host = events[int(rng.integers(0, n))]
        length = float(np.exp(rng.uniform(np.log(lmin_eff), np.log(lmax_eff))))
        length = min(length, duration)
        centre = rng.uniform(host.start, host.end)
        start = float(np.clip(centre - rng.uniform(0.2, 0.8) * length, 0.0, duration - length))
        end = start + length
        taken = {ev.label for ev in events if ev.start < end and start < ev.end} | {host.label}
        choices = [c for c in range(num_classes) if c not in taken]
        if choices and end > host.start and start < host.end:
            events.append(Event(start, end, int(rng.choice(choices))))
    events.sort(key=lambda ev: (ev.start, ev.end))
    return events


def has_overlap(events: Sequence[Event]) -> bool:
    """True if two events of different classes overlap in time."""
    for i, a in enumerate(events):
        for b in events[i + 1:]:
            if a.label != b.label and a.start < b.end and b.start < a.end:
                return True
    return False
