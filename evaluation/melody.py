"""How closely a converted song follows its source's melody, and how much hop-rate buzz it carries.

- melody match: the share of frames, voiced in both, whose f0 lies within a tolerance (50 cents by default)
  of the source's f0 moved by the transposition used;
- hop buzz: a decoder trained only briefly adds a buzz that repeats every hop (86 Hz at 44.1 kHz, hop 512).
  Its level is read at the multiples of the hop rate that lie between the sung harmonics, relative to the
  harmonics themselves. Natural singing gives about -20 dB; a buzz-dominated result lies above 0 dB.

`pm`, this module's default tracker, can lock onto that buzz on a briefly trained model's result and call a
correct melody wrong; evaluate.py (evaluation.report) therefore reads pitch with CREPE or pYIN
(evaluation.pitch) and uses `hop_buzz_db` from here, read at the source's harmonics.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from core.audio import load_audio

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


def hop_buzz_db(source_f0: np.ndarray, audio: np.ndarray, semitones: float = 0.0, sampling_rate: int = 44100,
                hop_length: int = 512, n_fft: int = 8192) -> float | None:
    """Median over the source's voiced frames of (mean level at multiples of sampling_rate/hop_length below
    3 kHz that are more than 40 Hz from every harmonic) minus (mean level at the first 8 harmonics below
    5 kHz), in dB, the harmonics being those of the source's f0 moved by `semitones`. None without a frame."""
    hop_rate = sampling_rate / hop_length
    multiples = hop_rate * np.arange(1, int(3000 / hop_rate) + 1)
    window = np.hanning(n_fft)
    bin_hz = sampling_rate / n_fft
    differences = []
    for frame, f0 in enumerate(np.asarray(source_f0, dtype=np.float64) * 2.0 ** (semitones / 12.0)):
        start = frame * hop_length + hop_length // 2 - n_fft // 2
        if f0 <= 0 or start < 0 or start + n_fft > len(audio):
            continue
        harmonics = f0 * np.arange(1, 9)
        harmonics = harmonics[harmonics < 5000]
        between = multiples[np.abs(multiples[:, None] - harmonics[None, :]).min(axis=1) > 40]
        if len(between) == 0:
            continue
        level = 20 * np.log10(np.abs(np.fft.rfft(audio[start:start + n_fft] * window)) + 1e-9)
        peak = np.maximum.reduce([np.roll(level, shift) for shift in (-1, 0, 1)])  # strongest of 3 bins
        differences.append(peak[np.rint(between / bin_hz).astype(int)].mean()
                           - peak[np.rint(harmonics / bin_hz).astype(int)].mean())
    return float(np.median(differences)) if differences else None


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


def buzz_of_file(source: str | os.PathLike, converted: str | os.PathLike, semitones: float = 0.0,
                 predictor: str = "pm", sampling_rate: int = 44100) -> float | None:
    """`hop_buzz_db` of the file `converted`, read at the harmonics of `source`'s f0."""
    audio, _ = load_audio(converted, sampling_rate)
    return hop_buzz_db(f0_track(source, predictor, sampling_rate), audio, semitones, sampling_rate)
