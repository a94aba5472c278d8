"""Loudness-envelope mixing (`-lea`, spec §6.7)."""
from __future__ import annotations

import librosa
import numpy as np


def _envelope(audio: np.ndarray, sr: int, length: int) -> np.ndarray:
    """Frame RMS at two frames per second, linearly stretched to `length` samples."""
    half = max(sr // 2, 1)
    rms = librosa.feature.rms(y=audio, frame_length=2 * half, hop_length=half)[0]
    if len(rms) == 1:
        return np.full(length, rms[0], dtype=np.float64)
    src = np.linspace(0.0, 1.0, len(rms))
    return np.interp(np.linspace(0.0, 1.0, length), src, rms)


def mix_loudness(source: np.ndarray, source_sr: int, output: np.ndarray, output_sr: int, rate: float) -> np.ndarray:
    """Blend the output's loudness envelope with the source's.

    rate 1 keeps the output as it is; rate 0 gives the output the source's envelope.
    """
    if rate >= 1.0:
        return output
    env_in = _envelope(np.asarray(source, dtype=np.float32), source_sr, len(output))
    env_out = np.maximum(_envelope(np.asarray(output, dtype=np.float32), output_sr, len(output)), 1e-6)
    gain = np.power(env_in, 1.0 - rate) * np.power(env_out, rate - 1.0)
    return (output * gain).astype(output.dtype)
