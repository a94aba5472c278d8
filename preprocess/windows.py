"""Long clips in bounded windows: the speech encoder and the F0 predictor see at most FEATURE_WINDOW_SECONDS at once.

The encoder's self-attention grows with the square of its input (a 12-minute clip without pauses took over
10 GB), so preprocess_hubert_f0.py computes a clip longer than the window piece by piece, as inference does
with its slices. Windows start on the model's frame grid (a multiple of `hop` samples), overlap by twice
FEATURE_CONTEXT_SECONDS, and each keeps only the frames of its core: the frames within the context of a cut
are dropped, so every kept frame sees at least that much audio on both sides. Because every start is a multiple
of the hop and the last window runs to the end of the clip, the frames kept add up to exactly the count the
whole clip gives at once (N // hop, or (N - 400) // 320 + 1 for the fairseq encoders). A clip no longer than
the window is computed in one piece, as before. Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from f0_predictor.base import F0Predictor, interpolate_unvoiced

FEATURE_WINDOW_SECONDS = 30.0   # the most audio the speech encoder or the F0 predictor is given at once
FEATURE_CONTEXT_SECONDS = 2.0   # audio on each side of a cut that is computed but whose frames are dropped


@dataclass(frozen=True)
class Window:
    start: int          # first sample given to the model (a multiple of the hop)
    end: int            # one past the last sample given
    keep_from: int      # first frame of the model's output that is kept, counted from the window's start
    keep_to: int | None  # one past the last kept frame; None: every frame to the end (the last window)


def plan_windows(n: int, hop: int, window: int, context: int) -> list[Window]:
    """Windows of at most `window` samples covering `n` samples; one window when `n <= window`.

    `window` and `context` are rounded down to multiples of `hop`; the window must exceed twice the context."""
    window, context = window // hop * hop, context // hop * hop
    if n <= window:
        return [Window(0, n, 0, None)]
    if window <= 2 * context or context < hop:
        raise ValueError(f"a window of {window} samples needs more than twice its context of {context}")
    windows, core_start = [], 0
    while True:
        start = max(0, core_start - context)
        if start + window >= n:
            windows.append(Window(start, n, (core_start - start) // hop, None))
            return windows
        core_end = start + window - context
        windows.append(Window(start, start + window, (core_start - start) // hop, (core_end - start) // hop))
        core_start = core_end


def windowed_f0_uv(predictor: F0Predictor, audio: np.ndarray,
                   window_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's (f0, uv) of `audio`: the raw f0 window by window, then the unvoiced frames filled over
    the whole clip (so a pause across a cut is interpolated as in one piece). Short clips: compute_f0_uv."""
    sr, hop = predictor.sampling_rate, predictor.hop_length
    window_seconds = FEATURE_WINDOW_SECONDS if window_seconds is None else window_seconds
    wav = np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1))
    windows = plan_windows(len(wav), hop, int(window_seconds * sr), int(FEATURE_CONTEXT_SECONDS * sr))
    if len(windows) == 1:
        return predictor.compute_f0_uv(audio)
    raw = [_raw_f0(predictor, wav[w.start:w.end])[w.keep_from:w.keep_to] for w in windows]
    return interpolate_unvoiced(np.concatenate(raw))


def _raw_f0(predictor: F0Predictor, part: np.ndarray) -> np.ndarray:
    p_len = len(part) // predictor.hop_length
    raw = np.asarray(predictor.compute_raw_f0(part, p_len), dtype=np.float64)
    if raw.shape != (p_len,):
        raise AssertionError(f"{type(predictor).__name__} returned {raw.shape} frames, expected ({p_len},)")
    return raw
