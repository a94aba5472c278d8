"""WORLD vocoder f0 estimators ('dio', 'harvest') refined by StoneMask (spec §8)."""
from __future__ import annotations

import warnings

import numpy as np

from f0_predictor.base import F0Predictor, resize_skipping_unvoiced


def _pyworld():
    """pyworld, imported on first use (its import emits a pkg_resources deprecation warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import pyworld
    return pyworld


class _WorldF0Predictor(F0Predictor):
    def estimate(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (f0, frame times) from the WORLD estimator, before StoneMask."""
        raise NotImplementedError

    @property
    def frame_period_ms(self) -> float:
        return 1000 * self.hop_length / self.sampling_rate

    def compute_raw_f0(self, wav: np.ndarray, p_len: int) -> np.ndarray:
        if len(wav) == 0:
            return np.zeros(p_len)
        wav = wav.astype(np.float64)
        f0, times = self.estimate(wav)
        f0 = _pyworld().stonemask(wav, f0, times, self.sampling_rate)
        return resize_skipping_unvoiced(self.round_f0(f0), p_len)

    def round_f0(self, f0: np.ndarray) -> np.ndarray:
        return f0


class DioF0Predictor(_WorldF0Predictor):
    name = "dio"

    def estimate(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _pyworld().dio(wav, fs=self.sampling_rate, f0_floor=self.f0_min, f0_ceil=self.f0_max,
                              frame_period=self.frame_period_ms)

    def round_f0(self, f0: np.ndarray) -> np.ndarray:
        """To 0.1 Hz, as the reference does (Python's round: halves go to even)."""
        return np.round(f0, 1)


class HarvestF0Predictor(_WorldF0Predictor):
    name = "harvest"

    def estimate(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _pyworld().harvest(wav, fs=self.sampling_rate, f0_floor=self.f0_min, f0_ceil=self.f0_max,
                                  frame_period=self.frame_period_ms)
