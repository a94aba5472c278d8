"""Octave-error repair of an F0 track (`--f0_repair`; off by default, which keeps 4.1's f0).

Pitch trackers (pm and dio most of all) now and then lock onto a harmonic or a subharmonic for a few
frames: the track leaps by an octave and comes back. They also flicker between voiced and unvoiced
for a frame or two. `repair_f0` undoes both, in this order:

1. octave folding: a short run of frames (at most `max_excursion_seconds`) lying about one or two
   octaves away from the median of its voiced neighbourhood, and from the track right next to it on
   both sides where both exist, is moved back by those octaves. A longer run is taken for a genuine
   leap and kept;
2. flicker removal: unvoiced gaps shorter than `min_run_seconds` between voiced frames become voiced
   (f0 interpolated log-linearly from the neighbours), then voiced runs shorter than that become unvoiced;
3. optional median smoothing of each voiced run (`median_frames`, 0 = off).

All of it works in cents on the voiced frames only; the inputs are never modified.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CENTS_PER_OCTAVE = 1200.0
MAX_EXCURSION_SECONDS = 0.15   # longer octave runs are genuine leaps
NEIGHBOURHOOD_SECONDS = 0.25   # context on each side of a run
OCTAVE_TOLERANCE_CENTS = 300.0  # a run counts as off by k octaves within this of k * 1200 cents
MAX_OCTAVES = 2                # fold one- and two-octave errors
EDGE_SECONDS = 0.03            # a run must lie off by the octaves from this much voiced track on each side
MIN_RUN_SECONDS = 0.03         # shorter voiced runs / unvoiced gaps are flicker
F0_REPAIR_HELP = "fold octave jumps of the F0 tracker back, remove voiced/unvoiced flicker (off: 4.1's f0)"


@dataclass(frozen=True)
class RepairSettings:
    """The limits of the repair; the defaults suit singing at the model's frame rates (86-100 frames/s)."""

    max_excursion_seconds: float = MAX_EXCURSION_SECONDS
    neighbourhood_seconds: float = NEIGHBOURHOOD_SECONDS
    octave_tolerance_cents: float = OCTAVE_TOLERANCE_CENTS
    max_octaves: int = MAX_OCTAVES
    edge_seconds: float = EDGE_SECONDS
    min_run_seconds: float = MIN_RUN_SECONDS
    median_frames: int = 0


def repair_f0(f0: np.ndarray, voiced: np.ndarray, frame_seconds: float,
              settings: RepairSettings = RepairSettings()) -> tuple[np.ndarray, np.ndarray]:
    """f0 `[T]` Hz and voiced `[T]` (truthy = voiced) -> new (f0 float64, voiced bool) with octave
    errors folded back and flicker removed. Unvoiced frames keep their input f0 value."""
    f0 = np.array(f0, dtype=np.float64).reshape(-1)
    voiced = np.array(voiced, dtype=bool).reshape(-1) & (f0 > 0)
    if not voiced.any():
        return f0, voiced
    cents = np.zeros_like(f0)
    cents[voiced] = CENTS_PER_OCTAVE * np.log2(f0[voiced])
    cents = fold_octaves(cents, voiced, frame_seconds, settings)
    cents, voiced = remove_flicker(cents, voiced, _frames(settings.min_run_seconds, frame_seconds))
    if settings.median_frames > 1:
        cents = median_smooth(cents, voiced, settings.median_frames)
    out = f0.copy()
    out[voiced] = 2 ** (cents[voiced] / CENTS_PER_OCTAVE)
    return out, voiced


def repair_raw_f0(raw: np.ndarray, frame_seconds: float, settings: RepairSettings = RepairSettings()) -> np.ndarray:
    """A predictor's raw track (0 = unvoiced) -> the repaired raw track, 0 where unvoiced."""
    raw = np.asarray(raw, dtype=np.float64)
    f0, voiced = repair_f0(raw, raw > 0, frame_seconds, settings)
    return np.where(voiced, f0, 0.0)


def fold_octaves(cents: np.ndarray, voiced: np.ndarray, frame_seconds: float,
                 settings: RepairSettings) -> np.ndarray:
    """Move short runs lying whole octaves off their neighbourhood back (a new array)."""
    out = cents.copy()
    window = _frames(settings.neighbourhood_seconds, frame_seconds)
    octaves = _octave_offsets(cents, voiced, window, settings)
    max_len = int(np.floor(settings.max_excursion_seconds / frame_seconds + 1e-9))
    for start, stop in _equal_runs(octaves):
        k = _confirmed_octaves(cents, voiced, start, stop, window, frame_seconds, settings)
        if stop - start <= max_len and k != 0:
            out[start:stop] -= k * CENTS_PER_OCTAVE
    return out


def _octave_offsets(cents: np.ndarray, voiced: np.ndarray, window: int, settings: RepairSettings) -> np.ndarray:
    """Per frame, the whole octaves (±1..max_octaves) it lies off the median of the voiced frames within
    `window` frames; 0 where none or unvoiced."""
    offsets = np.zeros(len(cents), dtype=int)
    index = np.nonzero(voiced)[0]
    for i in index:
        lo, hi = np.searchsorted(index, [i - window, i + window + 1])
        offsets[i] = _whole_octaves(cents[i] - np.median(cents[index[lo:hi]]), settings)
    return offsets


def _confirmed_octaves(cents: np.ndarray, voiced: np.ndarray, start: int, stop: int, window: int,
                       frame_seconds: float, settings: RepairSettings) -> int:
    """The octaves run [start, stop) lies off the voiced frames next to it on each side (the nearest
    `edge_seconds` of voiced frames within `window`), when every side that has some agrees; else 0.
    The nearest frames, not the whole neighbourhood: a note change nearby must not hide the jump."""
    level = np.median(cents[start:stop])
    edge = _frames(settings.edge_seconds, frame_seconds)
    left = np.nonzero(voiced[max(0, start - window):start])[0][-edge:] + max(0, start - window)
    right = np.nonzero(voiced[stop:stop + window])[0][:edge] + stop
    found = {_whole_octaves(level - np.median(cents[side]), settings) for side in (left, right) if len(side)}
    return found.pop() if len(found) == 1 else 0


def _whole_octaves(deviation: float, settings: RepairSettings) -> int:
    k = int(np.round(deviation / CENTS_PER_OCTAVE))
    if k == 0 or abs(k) > settings.max_octaves:
        return 0
    return k if abs(deviation - k * CENTS_PER_OCTAVE) <= settings.octave_tolerance_cents else 0


def remove_flicker(cents: np.ndarray, voiced: np.ndarray, min_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced gaps shorter than `min_frames` between voiced frames (linear in cents), then unvoice
    voiced runs shorter than that. -> new (cents, voiced)."""
    cents, voiced = cents.copy(), voiced.copy()
    for start, stop in _runs(~voiced):
        if stop - start < min_frames and start > 0 and stop < len(voiced):
            cents[start:stop] = np.interp(np.arange(start, stop), [start - 1, stop], cents[[start - 1, stop]])
            voiced[start:stop] = True
    for start, stop in _runs(voiced):
        if stop - start < min_frames:
            voiced[start:stop] = False
    return cents, voiced


def median_smooth(cents: np.ndarray, voiced: np.ndarray, frames: int) -> np.ndarray:
    """Running median over `frames` (made odd) frames within each voiced run, edges held."""
    half = frames // 2
    out = cents.copy()
    for start, stop in _runs(voiced):
        padded = np.pad(cents[start:stop], half, mode="edge")
        out[start:stop] = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()))


def _equal_runs(values: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of one nonzero value in `values`."""
    cuts = np.nonzero(np.diff(values))[0] + 1
    bounds = zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [len(values)]]).tolist())
    return [(start, stop) for start, stop in bounds if values[start] != 0]


def _frames(seconds: float, frame_seconds: float) -> int:
    return max(1, int(round(seconds / frame_seconds)))
