"""Artefacts a conversion can add that its source does not have: a DC offset, sound where the source is
silent, and a buzz repeating every hop.

- DC offset: the mean sample value. Speakers and codecs do not reproduce it, but it eats headroom and clicks
  at every cut; a clean recording has |DC| < 0.001.
- Level in the source's silent frames: the RMS level (dBFS) of the result over the frames where the source
  lies below -50 dBFS. A result that follows the source stays silent there too (about the source's level);
  a model that keeps sounding through pauses lies tens of dB above it.
- Hop-rate buzz: see `evaluation.melody.hop_buzz_db`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SILENT_SOURCE_DBFS = -50.0  # a source frame quieter than this is a pause
FRAME_SECONDS = 0.02
DC_FLAG = 0.01  # |DC offset| above this is flagged
SILENCE_FLAG_DBFS = -45.0  # a result louder than this in the source's pauses is flagged ...
SILENCE_FLAG_ABOVE_SOURCE_DB = 20.0  # ... when it is also this much louder than the source there
NO_SOUND_DBFS = -120.0  # the level reported for digital silence


def dc_offset(audio: np.ndarray) -> float:
    return float(np.mean(audio)) if len(audio) else 0.0


def frame_levels_dbfs(audio: np.ndarray, sampling_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    """RMS level in dBFS of consecutive frames of `frame_seconds` (the last partial frame dropped)."""
    size = max(1, round(frame_seconds * sampling_rate))
    frames = len(audio) // size
    if frames == 0:
        return np.zeros(0)
    blocks = np.asarray(audio[:frames * size], dtype=np.float64).reshape(frames, size)
    power = np.mean(blocks ** 2, axis=1)
    return np.maximum(10 * np.log10(np.maximum(power, 1e-30)), NO_SOUND_DBFS)


@dataclass(frozen=True)
class SilenceLevels:
    """result_dbfs: the result's RMS level over the source's silent frames; source_dbfs: the source's own level
    there; silent_share: the share of frames that are silent in the source. Levels are None without one."""

    result_dbfs: float | None
    source_dbfs: float | None
    silent_share: float

    def to_dict(self) -> dict:
        return asdict(self)


def level_in_source_silence(source: np.ndarray, result: np.ndarray, sampling_rate: int,
                            threshold_dbfs: float = SILENT_SOURCE_DBFS) -> SilenceLevels:
    """Levels of the result (with its DC removed) and of the source over the frames where the source lies
    below `threshold_dbfs`; both signals at `sampling_rate`, compared over their common length."""
    length = min(len(source), len(result))
    source_levels = frame_levels_dbfs(source[:length], sampling_rate)
    silent = source_levels < threshold_dbfs
    if not silent.any():
        return SilenceLevels(None, None, 0.0)
    centred = np.asarray(result[:length], dtype=np.float64) - dc_offset(result)
    result_levels = frame_levels_dbfs(centred, sampling_rate)
    return SilenceLevels(_mean_level(result_levels[silent]), _mean_level(source_levels[silent]),
                         float(silent.mean()))


def _mean_level(levels_dbfs: np.ndarray) -> float:
    """The level of the mean power of the frames (not the mean of their dB values)."""
    power = np.mean(10 ** (levels_dbfs / 10))
    return float(max(10 * np.log10(max(power, 1e-30)), NO_SOUND_DBFS))


def difference_db(reference: np.ndarray, other: np.ndarray) -> float | None:
    """How much `other` differs from `reference`: the energy of their difference relative to the energy of
    `reference`, in dB over their common length (-inf-like -120 for identical signals). Tells whether an
    option (k-means, feature retrieval) changes a result at all: -40 dB and below is inaudible."""
    length = min(len(reference), len(other))
    if length == 0:
        return None
    a = np.asarray(reference[:length], dtype=np.float64)
    b = np.asarray(other[:length], dtype=np.float64)
    energy = np.sum(a ** 2)
    if energy == 0:
        return None
    return float(max(10 * np.log10(max(np.sum((b - a) ** 2) / energy, 1e-30)), NO_SOUND_DBFS))


def flags(dc: float, silence: SilenceLevels) -> list[str]:
    """One line for each artefact beyond its threshold (empty when the result is clean)."""
    found = []
    if abs(dc) > DC_FLAG:
        found.append(f"DC offset {dc:+.3f} (above {DC_FLAG:g})")
    if (silence.result_dbfs is not None and silence.result_dbfs > SILENCE_FLAG_DBFS
            and silence.result_dbfs - silence.source_dbfs > SILENCE_FLAG_ABOVE_SOURCE_DB):
        found.append(f"sound in the source's pauses: {silence.result_dbfs:.0f} dBFS where the source is at "
                     f"{silence.source_dbfs:.0f} dBFS")
    return found
