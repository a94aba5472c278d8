"""How closely a converted song follows its source's melody: the share of frames, voiced in both, whose f0
lies within a tolerance (50 cents by default) of the source's f0 moved by the transposition used.

The demo prints it for its result, so "the melody comes through" is a number rather than an impression.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from modules.audio import load_audio

CENTS_PER_OCTAVE = 1200.0


@dataclass(frozen=True)
class MelodyMatch:
    """`within`: share of the compared frames that agree; `compared`: frames voiced in both."""

    within: float
    compared: int

    def describe(self, tolerance_cents: float = 50.0) -> str:
        if self.compared == 0:
            return "no frame is voiced in both the source and the result"
        return (f"{100 * self.within:.0f} % of {self.compared} frames voiced in both are within "
                f"{tolerance_cents:g} cents of the source's pitch")


def melody_match(source_f0: np.ndarray, converted_f0: np.ndarray, semitones: float = 0.0,
                 tolerance_cents: float = 50.0) -> MelodyMatch:
    """Compare two f0 tracks in Hz (0 = unvoiced) frame by frame over their common length."""
    frames = min(len(source_f0), len(converted_f0))
    source = np.asarray(source_f0[:frames], dtype=np.float64) * 2.0 ** (semitones / 12.0)
    converted = np.asarray(converted_f0[:frames], dtype=np.float64)
    voiced = (source > 0) & (converted > 0)
    if not voiced.any():
        return MelodyMatch(0.0, 0)
    cents = CENTS_PER_OCTAVE * np.abs(np.log2(converted[voiced] / source[voiced]))
    return MelodyMatch(float(np.mean(cents <= tolerance_cents)), int(voiced.sum()))


def f0_track(path: str | os.PathLike, predictor: str = "pm", sampling_rate: int = 44100,
             hop_length: int = 512) -> np.ndarray:
    """f0 in Hz per hop of the file at `path` (0 where unvoiced), by one of the toolkit's f0 predictors."""
    from f0_predictor import get_f0_predictor

    audio, _ = load_audio(path, sampling_rate)
    tracker = get_f0_predictor(predictor, hop_length, sampling_rate, device="cpu")
    return tracker.compute_raw_f0(audio, len(audio) // hop_length)


def compare_files(source: str | os.PathLike, converted: str | os.PathLike, semitones: float = 0.0,
                  tolerance_cents: float = 50.0, predictor: str = "pm") -> MelodyMatch:
    return melody_match(f0_track(source, predictor), f0_track(converted, predictor), semitones, tolerance_cents)
