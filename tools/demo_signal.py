"""Signals of the synthetic demo dataset: events, class prototypes and feature synthesis.

Used by ``tools/make_demo_data.py`` (files, CLI).

Signal design (a correct detector scores well, a broken one does not):
* Each class has a fixed random prototype: sounds a (8, 768) pattern over the 8 BEATs frequency
  tokens (with a class-specific spectral envelope and amplitude-modulation rate), actions a
  1024-d pattern in the UMT space and another in the VideoMAE space. Classes 2k and 2k+1 form a
  confusable pair: they share ``pair_shared`` (~0.65) of their prototype (cosine similarity).
* Sound events live in the audio features; visible sound events leave a weak hint in UMT.
  Actions live in the video features (UMT strong, VideoMAE weak, noisier, with jittered
  boundaries); the audio carries nothing about actions.
* An event adds ``amplitude x envelope(t) x (class prototype + instance noise)``, the envelope
  having soft (sigmoid) onsets and offsets. The background is white noise, a slowly varying
  per-video component, a per-video offset and a dataset-wide mean; unlabelled "distractor"
  sounds (random patterns) appear too.
* Per video: 2-6 sounds of 0.5-5 s, 2-5 actions of 1-8 s, laid out without overlap; then with
  probability ``p_overlap`` (per task) one extra event of a different class overlaps another,
  and with probability ``p_same_class_pair`` two consecutive events get the same class and a
  short gap (0.2-0.8 s).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tools.demo_events import PARAMS, Event, SignalParams, has_overlap, sample_events  # noqa: F401

GENERATOR_VERSION = 1
FRAME_RATE = 30.0
RESOLUTION = [1080, 1920]
BEATS_DIM = 768
BEATS_FREQ_TOKENS = 8
BEATS_PATCH_S = 0.16          # one BEATs time patch: 16 fbank frames of 10 ms
VIDEO_DIM = 1024
VIDEO_ROWS_PER_S = 7.5        # UMT/VideoMAE "_s4": one row per 4 frames at 30 fps
SPLITS = ("train", "valid", "test")

# Readable class names; classes 2k and 2k+1 are a confusable pair (shared prototype).
SOUND_CLASSES = (
    "Sound: knocking on a surface", "Sound: tapping on a surface",
    "Sound: human speech", "Sound: whispering",
    "Sound: clapping", "Sound: snapping fingers",
    "Sound: paper rustling", "Sound: plastic crinkling",
    "Sound: pouring liquid", "Sound: water splashing",
    "Sound: object dropping", "Sound: object hitting something",
)
ACTION_CLASSES = (
    "Putting something into something", "Taking something out of something",
    "Putting something on top of something", "Taking something from somewhere",
    "Pushing something from left to right", "Pushing something from right to left",
    "Opening something", "Closing something",
    "Covering something with something", "Uncovering something",
    "Pouring something into something", "Stirring something",
    "Lifting something up", "Putting something down",
    "Showing something to the camera", "Hiding something behind something",
)




# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------
def beats_rows(num_frames: int, frame_rate: float = FRAME_RATE) -> int:
    """BEATs rows N_a = 8*floor((100*D - 2)/16) for D = num_frames/frame_rate (exact for 30 fps)."""
    if frame_rate == FRAME_RATE:  # (100*nf/30 - 2)/16 = (10*nf - 6)/48, in integers
        return BEATS_FREQ_TOKENS * max(0, (10 * num_frames - 6) // 48)
    return BEATS_FREQ_TOKENS * max(0, int(np.floor((100.0 * num_frames / frame_rate - 2.0) / 16.0)))


def video_rows(num_frames: int, frame_rate: float = FRAME_RATE) -> int:
    """Video rows T_v = max(1, floor(7.5*D)) (exact for 30 fps: one row per 4 frames)."""
    if frame_rate == FRAME_RATE:
        return max(1, num_frames // 4)
    return max(1, int(np.floor(VIDEO_ROWS_PER_S * num_frames / frame_rate)))


# ------------------------------------------------------------------------------------------------
# Signal
# ------------------------------------------------------------------------------------------------
def _unit_rms(x: np.ndarray, axes: Tuple[int, ...]) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True))


def _paired(rng: np.random.Generator, num_classes: int, shape: Tuple[int, ...], shared: float
            ) -> np.ndarray:
    """(num_classes, *shape) prototypes, per-channel RMS 1; classes 2k, 2k+1 have cosine ~shared."""
    axes = tuple(range(1, len(shape) + 1))
    base = _unit_rms(rng.standard_normal(((num_classes + 1) // 2, *shape)), axes)
    own = _unit_rms(rng.standard_normal((num_classes, *shape)), axes)
    mixed = np.sqrt(shared) * base[np.arange(num_classes) // 2] + np.sqrt(1.0 - shared) * own
    return _unit_rms(mixed, axes)


@dataclass
class Prototypes:
    sound_audio: np.ndarray      # (12, 8, 768)
    sound_mod_hz: np.ndarray     # (12,)
    sound_mod_depth: np.ndarray  # (12,)
    sound_umt: np.ndarray        # (12, 1024) the weak visual hint of visible sounds
    action_umt: np.ndarray       # (16, 1024)
    action_videomae: np.ndarray  # (16, 1024)
    audio_mean: np.ndarray       # (8, 768)
    umt_mean: np.ndarray         # (1024,)
    videomae_mean: np.ndarray    # (1024,)


def make_prototypes(seed: int, params: SignalParams = PARAMS) -> Prototypes:
    rng = np.random.default_rng([seed, 0])
    ns, na = len(SOUND_CLASSES), len(ACTION_CLASSES)
    audio = _paired(rng, ns, (BEATS_FREQ_TOKENS, BEATS_DIM), params.pair_shared)
    # spectral envelope shared within a pair (same kind of source): energy per frequency token
    env = np.exp(0.6 * rng.standard_normal(((ns + 1) // 2, BEATS_FREQ_TOKENS)))[np.arange(ns) // 2]
    audio = _unit_rms(audio * env[:, :, None], (1, 2))
    return Prototypes(
        sound_audio=audio,
        sound_mod_hz=rng.uniform(*params.audio_modulation_hz, ns),
        sound_mod_depth=rng.uniform(*params.audio_modulation_depth, ns),
        sound_umt=_paired(rng, ns, (VIDEO_DIM,), params.pair_shared),
        action_umt=_paired(rng, na, (VIDEO_DIM,), params.pair_shared),
        action_videomae=_paired(rng, na, (VIDEO_DIM,), params.pair_shared),
        audio_mean=params.audio_mean * rng.standard_normal((BEATS_FREQ_TOKENS, BEATS_DIM)),
        umt_mean=params.video_mean * rng.standard_normal(VIDEO_DIM),
        videomae_mean=params.video_mean * rng.standard_normal(VIDEO_DIM),
    )


def _envelope(t: np.ndarray, starts: np.ndarray, ends: np.ndarray, tau: float) -> np.ndarray:
    """(E, T) soft box: sigmoid((t - start)/tau) * sigmoid((end - t)/tau)."""
    t = t[None, :]
    on = 0.5 * (1.0 + np.tanh(0.5 * (t - starts[:, None]) / tau))
    off = 0.5 * (1.0 + np.tanh(0.5 * (ends[:, None] - t) / tau))
    return on * off


def _slow(rng: np.random.Generator, t: np.ndarray, shape: Tuple[int, ...], rms: float,
          k: int = 3) -> np.ndarray:
    """(T, *shape): k random directions with smooth random time courses (0.03-0.3 Hz)."""
    dirs = rng.standard_normal((k, int(np.prod(shape))))
    freq = rng.uniform(0.03, 0.3, (k, 2))
    phase = rng.uniform(0, 2 * np.pi, (k, 2))
    courses = np.sin(2 * np.pi * freq[:, :, None] * t[None, None, :] + phase[:, :, None]).sum(1)
    courses *= rms / np.sqrt(k)  # each course has RMS ~1 -> per-channel RMS ~rms
    return (courses.T @ dirs).reshape(len(t), *shape)


def _amplitudes(rng: np.random.Generator, n: int, params: SignalParams) -> np.ndarray:
    return rng.uniform(*params.amplitude_range, n)


def synth_audio(rng: np.random.Generator, num_rows: int, sounds: Sequence[Event],
                protos: Prototypes, params: SignalParams = PARAMS) -> np.ndarray:
    """(num_rows, 768) float32 BEATs-like features: 8 frequency tokens per 160 ms, time-major."""
    p = num_rows // BEATS_FREQ_TOKENS
    shape = (BEATS_FREQ_TOKENS, BEATS_DIM)
    t = (np.arange(p) + 0.5) * BEATS_PATCH_S
    x = params.audio_noise * rng.standard_normal((p, *shape), dtype=np.float32)
    x += (protos.audio_mean + params.audio_offset * rng.standard_normal(shape)).astype(np.float32)
    x += _slow(rng, t, shape, params.audio_slow).astype(np.float32)

    n_distract = int(rng.integers(params.distractors[0], params.distractors[1] + 1))
    labels = np.array([ev.label for ev in sounds], dtype=np.int64)
    starts = np.array([ev.start for ev in sounds])
    ends = np.array([ev.end for ev in sounds])
    pat = protos.sound_audio[labels]
    pat = _unit_rms(pat + params.instance_noise * rng.standard_normal(pat.shape), (1, 2))
    hz, depth = protos.sound_mod_hz[labels], protos.sound_mod_depth[labels]
    if n_distract:  # unlabelled sound-like events: random patterns, random placement
        dur = t[-1] + 0.5 * BEATS_PATCH_S if p else 0.0
        d_len = rng.uniform(0.3, 2.0, n_distract)
        d_start = rng.uniform(0.0, max(dur - 0.3, 0.0), n_distract)
        starts = np.concatenate([starts, d_start])
        ends = np.concatenate([ends, d_start + d_len])
        pat = np.concatenate([pat, _unit_rms(rng.standard_normal((n_distract, *shape)), (1, 2))])
        hz = np.concatenate([hz, rng.uniform(*params.audio_modulation_hz, n_distract)])
        depth = np.concatenate([depth, rng.uniform(*params.audio_modulation_depth, n_distract)])
    if len(starts) and p:
        amp = params.audio_amplitude * _amplitudes(rng, len(starts), params)
        phase = rng.uniform(0, 2 * np.pi, len(starts))
        mod = 1.0 - depth[:, None] * 0.5 * (1.0 + np.sin(2 * np.pi * hz[:, None] * t[None, :]
                                                         + phase[:, None]))
        env = _envelope(t, starts, ends, params.audio_onset_s) * mod * amp[:, None]   # (E, P)
        x += (env.T @ pat.reshape(len(starts), -1)).reshape(p, *shape).astype(np.float32)
    return x.reshape(p * BEATS_FREQ_TOKENS, BEATS_DIM)


def synth_video(rng: np.random.Generator, num_rows: int, actions: Sequence[Event],
                sounds: Sequence[Tuple[Event, bool]], protos: Prototypes, family: str,
                params: SignalParams = PARAMS) -> np.ndarray:
    """(num_rows, 1024) float32 video features; ``family`` is 'umt' or 'videomae'."""
    t = (np.arange(num_rows) + 0.5) / VIDEO_ROWS_PER_S
    if family == "umt":
        noise, amp0, mean, pats = params.video_noise, params.umt_amplitude, protos.umt_mean, \
            protos.action_umt
        jitter = 0.0
    else:
        noise, amp0, mean, pats = params.videomae_noise, params.videomae_amplitude, \
            protos.videomae_mean, protos.action_videomae
        jitter = params.videomae_jitter_s
    x = noise * rng.standard_normal((num_rows, VIDEO_DIM), dtype=np.float32)
    x += (mean + params.video_offset * rng.standard_normal(VIDEO_DIM)).astype(np.float32)
    x += _slow(rng, t, (VIDEO_DIM,), params.video_slow).astype(np.float32)

    labels = np.array([ev.label for ev in actions], dtype=np.int64)
    starts = np.array([ev.start for ev in actions]) + rng.uniform(-jitter, jitter, len(actions))
    ends = np.array([ev.end for ev in actions]) + rng.uniform(-jitter, jitter, len(actions))
    pat = pats[labels]
    amp = amp0 * _amplitudes(rng, len(actions), params)
    if family == "umt":
        vis = [ev for ev, visible in sounds if visible]
        if vis:
            starts = np.concatenate([starts, [ev.start for ev in vis]])
            ends = np.concatenate([ends, [ev.end for ev in vis]])
            pat = np.concatenate([pat, protos.sound_umt[[ev.label for ev in vis]]])
            amp = np.concatenate([amp, params.umt_sound_hint * amp0
                                  * _amplitudes(rng, len(vis), params)])
    if len(starts):
        pat = _unit_rms(pat + params.instance_noise * rng.standard_normal(pat.shape), (1,))
        env = _envelope(t, starts, ends, params.video_onset_s) * amp[:, None]
        x += (env.T @ pat).astype(np.float32)
    return x


# ------------------------------------------------------------------------------------------------
# Videos and annotation records
# ------------------------------------------------------------------------------------------------
def _event_records(events: Sequence[Event], num_frames: int, names: Sequence[str],
                   visible: Optional[Sequence[bool]] = None) -> List[Dict[str, Any]]:
    end_us = int(round(num_frames / FRAME_RATE * 1e6))
    out = []
    for i, ev in enumerate(events):
        s_us = int(np.clip(round(ev.start * 1e6), 0, end_us))
        e_us = int(np.clip(round(ev.end * 1e6), s_us, end_us))
        rec: Dict[str, Any] = {
            "id": i,
            "label": names[ev.label],
            "label_id": ev.label,
            "timestamps": [s_us, e_us],
            "frame_ids": [min(int(round(s_us * 1e-6 * FRAME_RATE)), num_frames - 1),
                          min(int(round(e_us * 1e-6 * FRAME_RATE)), num_frames - 1)],
            "parent_objects": [],
        }
        if visible is not None:
            rec["is_visible"] = bool(visible[i])
        out.append(rec)
    return out


@dataclass
class VideoPlan:
    num_frames: int
    sounds: List[Event]
    visible: List[bool]  # per sound: is_visible (visible sounds leave a weak hint in UMT)
    actions: List[Event]


def plan_video(rng: np.random.Generator, min_duration: float, max_duration: float,
               params: SignalParams = PARAMS) -> VideoPlan:
    """Length and events of one video (drawn before its features, from the same ``rng``)."""
    num_frames = int(round(rng.uniform(min_duration, max_duration) * FRAME_RATE))
    duration = num_frames / FRAME_RATE
    sounds = sample_events(rng, duration, len(SOUND_CLASSES), params.sound_count,
                           params.sound_length_s, params)
    visible = [bool(v) for v in rng.random(len(sounds)) < 0.6]
    actions = sample_events(rng, duration, len(ACTION_CLASSES), params.action_count,
                            params.action_length_s, params)
    return VideoPlan(num_frames, sounds, visible, actions)


def video_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of video ``index``: independent of the split sizes and of other videos."""
    return np.random.default_rng([seed, 1, index])


def make_video(seed: int, index: int, split: str, min_duration: float, max_duration: float,
               protos: Prototypes, params: SignalParams = PARAMS
               ) -> Tuple[str, Dict[str, Any], Dict[str, np.ndarray]]:
    """One video: (video_id, annotation entry, {family: (T, C) float32 features})."""
    rng = video_rng(seed, index)
    vid = f"video_{index:05d}"
    plan = plan_video(rng, min_duration, max_duration, params)
    num_frames, sounds, visible, actions = plan.num_frames, plan.sounds, plan.visible, plan.actions
    feats = {
        "beats": synth_audio(rng, beats_rows(num_frames), sounds, protos, params),
        "umt": synth_video(rng, video_rows(num_frames), actions, list(zip(sounds, visible)),
                           protos, "umt", params),
        "videomae": synth_video(rng, video_rows(num_frames), actions, [], protos, "videomae",
                                params),
    }
    entry: Dict[str, Any] = {
        "metadata": {"video_id": vid, "split": split, "num_frames": num_frames,
                     "frame_rate": FRAME_RATE, "resolution": list(RESOLUTION)},
        "action_localisation": _event_records(actions, num_frames, ACTION_CLASSES),
        "sound_localisation": _event_records(sounds, num_frames, SOUND_CLASSES, visible),
        "mc_question": [],
    }
    return vid, entry, feats
