"""The output stage ("cleanup"): remove the DC offset of a converted clip and silence the singer's pauses.

Two defects of the So-VITS output that 4.1 leaves in:
- a DC offset (up to +0.17, larger than the singing itself), removed with a zero-phase Butterworth high-pass
  two octaves below E2 (82 Hz, about the lowest sung note): run forwards and backwards it is -6 dB at 20 Hz,
  -0.04 dB at 80 Hz, and shifts no phase, so the tone is untouched;
- sound in the pauses (-30 dBFS where the source sits at -58 dBFS: the NSF source is driven by an interpolated
  f0 everywhere), removed with a gate on the SOURCE's frame RMS: frames below `gate_db` get gain 0, the rest 1,
  opened `attack_seconds` before an onset and held `hold_seconds` after the sound ends (consonants, tails),
  with raised-cosine fades on the closed side of every edge, so that open frames keep their level exactly.

Frame k of `frame_rms` covers output samples [k * hop, (k + 1) * hop), as the model's output frames do.
The stage reads `context_samples` beyond what it returns (the high-pass's settling time): callers filter a
padded clip and trim the padding afterwards, so that no filter edge lands in the audio they keep. Where the kept
audio reaches the clip's end (a stream's newest samples), the high-pass runs forwards only (`causal`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal


@dataclass(frozen=True)
class CleanupSettings:
    """The output stage's parameters; the defaults are what every conversion uses."""

    highpass_hz: float = 20.0        # DC filter cutoff, two octaves below the lowest sung note (E2, 82 Hz)
    highpass_order: int = 2          # Butterworth order of one pass (run twice: zero phase)
    gate_db: float = -45.0           # source frames quieter than this (frame RMS, dBFS) are a pause
    attack_seconds: float = 0.01     # the gate opens this long before the source gets loud
    hold_seconds: float = 0.0        # and stays open this long after it gets quiet (a hold leaks the model's
                                     # sound into the pause: 0.06 s left -26..-31 dBFS there, none -38..-44)
    fade_seconds: float = 0.01       # raised-cosine fade at each gate edge, on the closed side
    settle_tolerance: float = 1e-5   # a filter edge transient is negligible once decayed to this share


DEFAULT_CLEANUP = CleanupSettings()


@lru_cache(maxsize=16)
def _highpass(sr: int, hz: float, order: int) -> np.ndarray:
    return signal.butter(order, hz, btype="highpass", fs=sr, output="sos")


def remove_dc(audio: np.ndarray, sr: int, settings: CleanupSettings = DEFAULT_CLEANUP,
              causal: bool = False) -> np.ndarray:
    """`audio` `[N]` high-passed at `settings.highpass_hz`; float32, same length.

    Zero phase (forwards and backwards) by default; `causal` runs it forwards only, for audio whose last samples
    are used although nothing follows them (a stream's newest block): the backward pass would have to start
    from a guessed future there. Either way the filter starts in a mirror image of the first (and last)
    `settle_samples`, whose mean is the local DC, so that its start-up transient stays out of the audio."""
    x = np.asarray(audio, dtype=np.float64)
    if len(x) < 2:
        return np.zeros(len(x), dtype=np.float32)
    sos = _highpass(sr, settings.highpass_hz, settings.highpass_order)
    edge = min(settle_samples(sr, settings), len(x) - 1)
    if not causal:
        return signal.sosfiltfilt(sos, x, padtype="even", padlen=edge).astype(np.float32)
    mirrored = np.concatenate([x[edge:0:-1], x])
    filtered, _ = signal.sosfilt(sos, mirrored, zi=signal.sosfilt_zi(sos) * mirrored[0])
    return filtered[edge:].astype(np.float32)


@lru_cache(maxsize=16)
def settle_samples(sr: int, settings: CleanupSettings = DEFAULT_CLEANUP) -> int:
    """Samples after which a transient of the high-pass has decayed to `settle_tolerance`: its slowest pole's
    decay (0.13 s for the defaults, at any rate)."""
    _, poles, _ = signal.sos2zpk(_highpass(sr, settings.highpass_hz, settings.highpass_order))
    decay_per_sample = -math.log(float(np.abs(poles).max()))
    return math.ceil(math.log(1 / settings.settle_tolerance) / decay_per_sample)


def context_samples(sr: int, settings: CleanupSettings = DEFAULT_CLEANUP) -> int:
    """How far beyond a sample the stage looks: the filter's settling, or the gate's attack/hold plus fade."""
    gate = max(settings.attack_seconds, settings.hold_seconds) + settings.fade_seconds
    return max(settle_samples(sr, settings), math.ceil(gate * sr))


def open_frames(frame_rms: np.ndarray, hop: int, sr: int, settings: CleanupSettings = DEFAULT_CLEANUP) -> np.ndarray:
    """Per frame `[T]`: True where the gate is open (a frame at or above `gate_db` lies within the attack
    after it or the hold before it)."""
    loud = np.asarray(frame_rms, dtype=np.float64) >= 10 ** (settings.gate_db / 20)
    before = math.ceil(settings.attack_seconds * sr / hop)
    after = math.ceil(settings.hold_seconds * sr / hop)
    padded = np.concatenate([np.zeros(after), loud, np.zeros(before)])
    return np.convolve(padded, np.ones(before + after + 1), mode="valid") > 0.5


def pause_gain(frame_rms: np.ndarray, hop: int, sr: int, settings: CleanupSettings = DEFAULT_CLEANUP) -> np.ndarray:
    """Per-sample gain `[T * hop]` float32: 1 where the gate is open, 0 in the pauses, raised-cosine fades of
    `fade_seconds` on the closed side of each edge."""
    is_open = np.repeat(open_frames(frame_rms, hop, sr, settings), hop)
    fade = int(round(settings.fade_seconds * sr))
    if fade == 0 or not is_open.any():
        return is_open.astype(np.float32)
    distance = _distance_to_open(is_open)
    ramp = 0.5 * (1 + np.cos(np.pi * np.minimum(distance / fade, 1.0)))
    return np.where(distance >= fade, 0.0, ramp).astype(np.float32)


def _distance_to_open(is_open: np.ndarray) -> np.ndarray:
    """Per sample, how many samples away the nearest open sample is (0 on open ones); some must be open."""
    index = np.arange(len(is_open))
    far = 2 * len(is_open)
    last = np.maximum.accumulate(np.where(is_open, index, -far))
    following = np.minimum.accumulate(np.where(is_open, index, far)[::-1])[::-1]
    return np.minimum(index - last, following - index)


def clean_output(audio: np.ndarray, frame_rms: np.ndarray, hop: int, sr: int,
                 settings: CleanupSettings = DEFAULT_CLEANUP, causal: bool = False) -> np.ndarray:
    """The output stage on one converted clip `[N]` (N about T * hop) given the source's frame RMS `[T]`:
    DC removed (`causal`: see `remove_dc`), then the pauses gated. float32, same length."""
    filtered = remove_dc(audio, sr, settings, causal)
    gain = pause_gain(frame_rms, hop, sr, settings)
    if len(gain) < len(filtered):
        gain = np.pad(gain, (0, len(filtered) - len(gain)), mode="edge" if len(gain) else "constant")
    return filtered * gain[:len(filtered)]
