"""Praat autocorrelation pitch ('pm'), with so-vits-svc 4.1's settings (spec §8)."""
from __future__ import annotations

import math

import numpy as np
import parselmouth

from f0_predictor.base import F0Predictor

# Praat's autocorrelation method needs a window of this many periods of the pitch floor.
PERIODS_PER_WINDOW = 3


class PMF0Predictor(F0Predictor):
    name = "pm"
    voicing_threshold = 0.6

    def compute_raw_f0(self, wav: np.ndarray, p_len: int) -> np.ndarray:
        if len(wav) < math.ceil(PERIODS_PER_WINDOW * self.sampling_rate / self.f0_min):
            return np.zeros(p_len)  # too short for one analysis window
        pitch = parselmouth.Sound(wav, self.sampling_rate).to_pitch_ac(
            time_step=self.hop_length / self.sampling_rate, voicing_threshold=self.voicing_threshold,
            pitch_floor=self.f0_min, pitch_ceiling=self.f0_max)
        return center_to_length(pitch.selected_array["frequency"], p_len)


def center_to_length(f0: np.ndarray, p_len: int) -> np.ndarray:
    """Zero-pad both ends to `p_len` frames, the left side getting ceil(missing / 2); a longer
    track is cropped symmetrically instead."""
    missing = p_len - len(f0)
    if missing >= 0:
        left = (missing + 1) // 2
        return np.pad(f0, (left, missing - left))
    start = -missing // 2
    return f0[start:start + p_len]
