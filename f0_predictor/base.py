"""The one interface every F0 predictor implements, and the post-processing they share (spec §8)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class F0Predictor(ABC):
    """Estimates f0 on the model's frame grid (`hop_length` samples at `sampling_rate`).

    Subclasses implement `compute_raw_f0`, which returns one value per frame with 0 for unvoiced
    frames; `compute_f0_uv` turns that into the (f0, uv) pair training and inference use.
    """

    name = ""

    def __init__(self, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                 threshold: float = 0.05, pretrain_dir: Path = Path("pretrain"),
                 f0_min: float = 50.0, f0_max: float = 1100.0):
        self.hop_length = hop_length
        self.sampling_rate = sampling_rate
        self.device = device
        self.threshold = threshold
        self.pretrain_dir = Path(pretrain_dir)
        self.f0_min = f0_min
        self.f0_max = f0_max

    @abstractmethod
    def compute_raw_f0(self, wav: np.ndarray, p_len: int) -> np.ndarray:
        """wav: mono float at `sampling_rate` -> f0 in Hz, shape `[p_len]`, 0 where unvoiced."""

    def compute_f0_uv(self, wav: np.ndarray, p_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (f0 `[p_len]` with unvoiced frames filled by interpolation, uv `[p_len]` 1.0 voiced / 0.0 not)."""
        if p_len is None:
            p_len = len(wav) // self.hop_length
        raw = np.asarray(self.compute_raw_f0(np.asarray(wav, dtype=np.float32), p_len), dtype=np.float64)
        return interpolate_unvoiced(raw)

    def compute_f0(self, wav: np.ndarray, p_len: int | None = None) -> np.ndarray:
        return self.compute_f0_uv(wav, p_len)[0]


def interpolate_unvoiced(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced frames (f0 <= 0) by linear interpolation in time between voiced frames,
    holding the first/last voiced value at the ends. No voiced frame -> all zeros.
    Returns (filled f0, uv)."""
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64))
    uv = (f0 > 0).astype(np.float64)
    voiced = np.nonzero(uv)[0]
    if len(voiced) == 0:
        return np.zeros_like(f0), uv
    filled = np.interp(np.arange(len(f0)), voiced, f0[voiced])
    return filled, uv
