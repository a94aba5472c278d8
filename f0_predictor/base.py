"""The one interface every F0 predictor implements, and the post-processing they share (spec §8).

Every predictor produces a raw f0 track on its own frame grid (0 = unvoiced). Two resizers bring
that track onto the model's grid of `p_len` frames (hop `hop_length` at `sampling_rate`):
`resize_nearest` (crepe, rmvpe, fcpe) and `resize_skipping_unvoiced` (dio, harvest). Then
`interpolate_unvoiced` derives uv and fills the unvoiced frames.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from core.audio import resample
from core.errors import AudioError

if TYPE_CHECKING:
    import torch


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
        """wav: mono float32 at `sampling_rate` -> f0 in Hz, shape `[p_len]`, 0 where unvoiced."""

    def compute_f0_uv(self, wav: np.ndarray, p_len: int | None = None,
                      repair: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (f0 `[p_len]` float64 with unvoiced frames filled by interpolation,
        uv `[p_len]` float32, 1 voiced / 0 not). p_len defaults to len(wav) // hop_length.
        `repair` (raw track -> raw track, 0 = unvoiced) runs before the interpolation (--f0_repair)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim > 1 and sorted(wav.shape)[-2] > 1:
            raise AudioError(f"f0 prediction needs mono audio, got an array of shape {wav.shape}")
        wav = np.nan_to_num(wav.reshape(-1))
        if p_len is None:
            p_len = len(wav) // self.hop_length
        if p_len <= 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float32)
        if len(wav) == 0:
            return np.zeros(p_len, dtype=np.float64), np.zeros(p_len, dtype=np.float32)
        raw = np.asarray(self.compute_raw_f0(wav, p_len), dtype=np.float64)
        if raw.shape != (p_len,):
            raise AssertionError(f"{type(self).__name__} returned {raw.shape} frames, expected ({p_len},)")
        return interpolate_unvoiced(raw if repair is None else repair(raw))

    def compute_f0(self, wav: np.ndarray, p_len: int | None = None) -> np.ndarray:
        return self.compute_f0_uv(wav, p_len)[0]


def pick_device(device: str | None) -> torch.device:
    """The requested device, or CUDA when available and none was requested."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def interpolate_unvoiced(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced frames (f0 <= 0) by linear interpolation in time between voiced frames,
    holding the first/last voiced value at the ends. No voiced frame -> all zeros.
    Returns (filled f0 float64, uv float32)."""
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64))
    uv = (f0 > 0).astype(np.float32)
    voiced = np.nonzero(uv)[0]
    if len(voiced) == 0:
        return np.zeros_like(f0), uv
    filled = np.interp(np.arange(len(f0)), voiced, f0[voiced])
    return filled, uv


def resample_ceil(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """soxr resampling, zero-padded to ceil(len * sr_out / sr_in) samples: the length the
    reference resamplers (torchaudio, resampy) give, which fixes the neural predictors' frame count."""
    target = -(-len(wav) * sr_out // sr_in)
    out = resample(np.asarray(wav, dtype=np.float32), sr_in, sr_out)[:target]
    return np.pad(out, (0, target - len(out)))


def resize_nearest(f0: np.ndarray, p_len: int) -> np.ndarray:
    """Nearest-neighbour resize to `p_len` frames with torch's index rule (source index
    floor(i * len / p_len) in float32), as the reference's `F.interpolate(mode='nearest')`."""
    import torch

    track = torch.as_tensor(np.asarray(f0, dtype=np.float32))[None, None]  # [1, 1, T]
    if track.shape[-1] == 0:
        return np.zeros(p_len, dtype=np.float32)
    return torch.nn.functional.interpolate(track, size=p_len, mode="nearest")[0, 0].numpy()


def resize_skipping_unvoiced(f0: np.ndarray, p_len: int) -> np.ndarray:
    """Linear resize in index space (target i sits at source position i * len / p_len) where
    unvoiced (near-zero) frames count as missing: any target touching one comes out 0."""
    source = np.asarray(f0, dtype=np.float64).copy()
    if len(source) == 0:
        return np.zeros(p_len)
    source[source < 0.001] = np.nan
    positions = np.arange(0, len(source) * p_len, len(source)) / p_len
    return np.nan_to_num(np.interp(positions, np.arange(len(source)), source))
