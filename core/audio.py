"""Reading, resampling and writing audio.

soundfile reads every format libsndfile knows (wav, flac, ogg, mp3 with libsndfile >= 1.1) at any
bit depth and channel count; soxr resamples. Bad files raise AudioError naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import soxr

from core.errors import AudioError
from core.fileio import atomic_path


def load_audio(path: str | os.PathLike, sr: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Read `path` as float32 in [-1, 1] (mono by channel mean unless mono=False, then [channels, N]).

    With `sr`, the audio is resampled to that rate. Empty files and NaN/inf samples are refused.
    """
    path = Path(path)
    try:
        data, file_sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as error:
        raise AudioError(f"cannot read audio {path}: {error}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} holds NaN or infinite samples")
    audio = data.mean(axis=1) if mono else data.T
    if sr is not None and sr != file_sr:
        audio = resample(audio, file_sr, sr)
        file_sr = sr
    return np.ascontiguousarray(audio, dtype=np.float32), int(file_sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis with soxr's very-high-quality filter."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    if audio.ndim == 1:
        return soxr.resample(audio, sr_in, sr_out, quality="VHQ").astype(np.float32)
    return soxr.resample(audio.T, sr_in, sr_out, quality="VHQ").T.astype(np.float32)


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad `[N]` audio at the end to exactly `length` samples."""
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def write_audio(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str | None = "PCM_16",
                format: str | None = None) -> None:
    """Write audio atomically. The format follows the extension unless `format` is given."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".") or "wav").upper()
    with atomic_path(path, suffix=path.suffix or ".wav") as tmp:
        soundfile.write(str(tmp), np.asarray(audio), sr, subtype=subtype, format=fmt)
