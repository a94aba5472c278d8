"""Silence-based slicing of a recording into voiced and silent segments.

One implementation serves dataset slicing (slice_audio.py) and inference (long inputs are converted
piece by piece). Its cut points equal so-vits-svc 4.1's `inference/slicer.py` (an openvpi audio-slicer),
except that 4.1's zero-length ranges are not produced and its short-input check counts frames.

How it works, in frames of `hop_size_ms` (frame i is centred on sample i * hop):
1. Frame RMS over a window of min(min_interval, 4 * hop) samples, zero-padded at both ends.
2. A frame is silent when its RMS is below 10 ** (threshold_db / 20). Runs of silent frames are
   examined in order. A run closed by a voiced frame becomes a cut when it is leading silence longer
   than `max_sil_kept`, or when it lasts at least `min_interval` and the clip since the last cut is at
   least `min_length` long. A run that reaches the end is cut when it lasts at least `min_interval`.
3. The part of a run that is removed depends on its length (all "quietest" picks are RMS minima, and the
   search ranges include the voiced frame that closes the run):
   - up to max_sil_kept: nothing is removed; the recording is split at the quietest frame of the run
     (leading silence: everything before that frame is removed);
   - up to 2 * max_sil_kept: the quietest frame of the overlap of "first max_sil_kept frames" and "last
     max_sil_kept frames" is found, and the removed range runs from the quietest frame near the run
     start (or that middle frame, if earlier) to the quietest frame near the run end (or the middle);
   - longer: the removed range runs from the quietest frame within max_sil_kept of the start to the
     quietest frame within max_sil_kept of the end.
   A trailing run is removed from its quietest frame within max_sil_kept of its start to the end.
4. Optionally, voiced segments longer than `max_clip_s` are split at their quietest frame between half
   the limit and the limit (never leaving a last piece under a quarter of the limit).
Input that is silent throughout is one silent segment; other input no longer than min_length is one
voiced segment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Segment(NamedTuple):
    start: int    # first sample
    end: int      # one past the last sample
    silent: bool  # True for removed silence


@dataclass(frozen=True)
class SlicerFrames:
    """The slicer's parameters converted from milliseconds to samples and frames."""
    hop: int               # samples per frame
    win: int               # RMS window in samples
    min_length: int        # frames
    min_interval: int      # frames
    max_sil_kept: int      # frames
    max_clip: int | None   # frames
    threshold: float       # linear amplitude


class Slicer:
    """Cut a recording on silence. `segments(audio)` covers the whole input contiguously."""

    def __init__(self, sr: int, threshold_db: float = -40.0, min_length_ms: float = 5000,
                 min_interval_ms: float = 300, hop_size_ms: float = 20, max_sil_kept_ms: float = 5000,
                 max_clip_s: float | None = None):
        if not min_length_ms >= min_interval_ms >= hop_size_ms > 0:
            raise ValueError("slicer needs min_length >= min_interval >= hop_size > 0")
        if max_sil_kept_ms < hop_size_ms:
            raise ValueError("slicer needs max_sil_kept >= hop_size")
        if max_clip_s is not None and max_clip_s * 1000 < 4 * hop_size_ms:
            raise ValueError("slicer max_clip must be at least 4 hops long")
        self.sr = sr
        hop = round(sr * hop_size_ms / 1000)
        interval_samples = sr * min_interval_ms / 1000
        self.frames = SlicerFrames(
            hop=hop,
            win=min(round(interval_samples), 4 * hop),
            min_length=round(sr * min_length_ms / 1000 / hop),
            min_interval=round(interval_samples / hop),
            max_sil_kept=round(sr * max_sil_kept_ms / 1000 / hop),
            max_clip=None if max_clip_s is None else int(sr * max_clip_s / hop),
            threshold=10 ** (threshold_db / 20),
        )

    def rms(self, audio: np.ndarray) -> np.ndarray:
        """Frame RMS, [1 + N // hop] for N samples (mono; [C, N] input is averaged over channels)."""
        return frame_rms(to_mono(audio), self.frames.win, self.frames.hop)

    def segments(self, audio: np.ndarray) -> list[Segment]:
        """Contiguous, non-empty segments covering `audio` ([N] or [C, N]) from sample 0 to N."""
        mono = to_mono(audio)
        n = len(mono)
        if n == 0:
            return []
        f = self.frames
        rms = frame_rms(mono, f.win, f.hop)
        if rms.max() < f.threshold:
            return [Segment(0, n, True)]
        removed = [] if len(rms) <= f.min_length else removed_ranges(rms, f)
        segments = ranges_to_segments(removed, f.hop, n)
        if f.max_clip is not None:
            segments = split_long(segments, rms, f)
        return segments

    def chunks(self, audio: np.ndarray) -> dict[str, dict]:
        """4.1's chunk dict: {"0": {"slice": silent?, "split_time": "start,end"}, ...} (no empty ranges)."""
        return segments_to_chunks(self.segments(audio))


def to_mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def frame_rms(audio: np.ndarray, win: int, hop: int) -> np.ndarray:
    """RMS of windows of `win` samples centred on samples 0, hop, 2*hop, ... (zeros beyond the ends).

    Uses a running sum of squares, so memory stays O(N) for long recordings.
    """
    n_frames = 1 + len(audio) // hop
    squares = np.concatenate([np.zeros(1), np.cumsum(np.square(audio, dtype=np.float64))])
    starts = np.arange(n_frames) * hop - win // 2
    lo = np.clip(starts, 0, len(audio))
    hi = np.clip(starts + win, 0, len(audio))
    power = np.maximum(squares[hi] - squares[lo], 0.0) / win
    return np.sqrt(power).astype(np.float32)


def silent_runs(rms: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(first, end) frame pairs of maximal runs with rms < threshold; `end` is one past the run."""
    silent = np.concatenate([[False], rms < threshold, [False]])
    edges = np.flatnonzero(silent[1:] != silent[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _quietest(rms: np.ndarray, first: int, last: int) -> int:
    """Index of the smallest rms in frames first..last inclusive (earliest on ties)."""
    return first + int(np.argmin(rms[first:last + 1]))


def removed_ranges(rms: np.ndarray, f: SlicerFrames) -> list[tuple[int, int]]:
    """Frame ranges [a, b) of silence to remove; a == b marks a plain split point."""
    total = len(rms)
    keep = f.max_sil_kept
    removed: list[tuple[int, int]] = []
    clip_start = 0
    for first, end in silent_runs(rms, f.threshold):
        length = end - first
        if end == total:
            if length >= f.min_interval:
                removed.append((_quietest(rms, first, min(total, first + keep)), total + 1))
            break
        leading = first == 0 and end > keep
        in_middle = length >= f.min_interval and end - clip_start >= f.min_length
        if not (leading or in_middle):
            continue
        start_pick = _quietest(rms, first, first + keep) if length > keep else None
        end_pick = _quietest(rms, end - keep, end) if length > keep else None
        if length <= keep:
            split = _quietest(rms, first, end)
            cut = (0 if first == 0 else split, split)
        elif length <= 2 * keep:
            middle = _quietest(rms, end - keep, first + keep)
            cut = (0, end_pick) if first == 0 else (min(start_pick, middle), max(end_pick, middle))
        else:
            cut = (0 if first == 0 else start_pick, end_pick)
        removed.append(cut)
        clip_start = cut[1]
    return removed


def ranges_to_segments(removed: list[tuple[int, int]], hop: int, n: int) -> list[Segment]:
    """Turn removed frame ranges into contiguous sample segments, dropping empty ones."""
    segments: list[Segment] = []
    position = 0
    for a, b in removed:
        start, end = min(n, a * hop), min(n, b * hop)
        if start > position:
            segments.append(Segment(position, start, False))
        if end > start:
            segments.append(Segment(start, end, True))
        position = max(position, end)
    if position < n:
        segments.append(Segment(position, n, False))
    return segments


def split_long(segments: list[Segment], rms: np.ndarray, f: SlicerFrames) -> list[Segment]:
    """Split voiced segments longer than max_clip frames at quiet frames (see the module docstring)."""
    limit = f.max_clip * f.hop
    out: list[Segment] = []
    for seg in segments:
        start = seg.start
        while not seg.silent and seg.end - start > limit:
            lo = math.ceil((start + limit / 2) / f.hop)
            hi = math.floor(min(start + limit, seg.end - limit / 4) / f.hop)
            cut = _quietest(rms, lo, hi) * f.hop
            out.append(Segment(start, cut, False))
            start = cut
        out.append(Segment(start, seg.end, seg.silent))
    return out


def segments_to_chunks(segments: list[Segment]) -> dict[str, dict]:
    """4.1's chunk dict shape for a list of segments."""
    return {str(i): {"slice": seg.silent, "split_time": f"{seg.start},{seg.end}"} for i, seg in enumerate(segments)}
