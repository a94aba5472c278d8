"""Every figure of one converted file against its source, the mean over files, a table and JSON.

`analyse_source` computes what depends on the source only (its f0 track and speaker embedding) once, so
comparing several results of one source costs one analysis of it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from evaluation import artefacts, speaker
from evaluation.melody import hop_buzz_db
from evaluation.pitch import DEFAULT_HOP_SECONDS, DEFAULT_TRACKER, F0Metrics, f0_metrics, track_f0

# What each figure means, in the order of the table; the demo and evaluate.py print these lines.
MEANINGS = {
    "f0_rmse_cents": "F0 RMSE: root mean square pitch difference to the (transposed) source over frames voiced "
                     "in both, in cents (100 = a semitone); below ~50 is in tune",
    "f0_corr": "F0 corr: correlation of the two pitch curves (1 = the melody's shape is followed exactly)",
    "vuv_error": "V/UV err: share of frames voiced in one of source and result only (0 = pauses and notes agree)",
    "speaker_target": "sim target: speaker similarity to the target's training audio (1 = same voice; two "
                      "recordings of one speaker score ~0.9, two speakers ~0.35-0.7)",
    "speaker_source": "sim source: speaker similarity to the source singer (should lie below sim target)",
    "dc_offset": "DC: mean sample value; a clean recording has |DC| < 0.001, above 0.01 is flagged",
    "silence_dbfs": "pause level: the result's level where the source is silent (< -50 dBFS), in dBFS; "
                    "flagged above -45 dBFS when 20 dB louder than the source there",
    "hop_buzz_db": "buzz: level of the hop-rate (86 Hz) buzz between the sung harmonics relative to them; "
                   "natural singing ~-20 dB, above 0 dB the buzz dominates",
    "difference_db": "change: how much this run's result differs from the first run's (energy of the "
                     "difference relative to the first, in dB); below -40 dB the option changed nothing audible",
}
COLUMNS = {"f0_rmse_cents": ("F0 RMSE", "{:.0f}"), "f0_corr": ("F0 corr", "{:.3f}"),
           "vuv_error": ("V/UV err", "{:.3f}"), "speaker_target": ("sim target", "{:.3f}"),
           "speaker_source": ("sim source", "{:.3f}"), "dc_offset": ("DC", "{:+.4f}"),
           "silence_dbfs": ("pause dBFS", "{:.0f}"), "hop_buzz_db": ("buzz dB", "{:+.1f}"),
           "difference_db": ("change dB", "{:.0f}")}


@dataclass
class SourceAnalysis:
    """What depends on the source only: its audio, f0 track and speaker embedding."""

    name: str
    audio: np.ndarray
    sampling_rate: int
    f0: np.ndarray
    embedding: np.ndarray | None


@dataclass
class FileReport:
    name: str
    result: str
    pitch: F0Metrics
    speaker_target: float | None
    speaker_source: float | None
    source_to_target: float | None
    dc_offset: float
    silence: artefacts.SilenceLevels
    hop_buzz_db: float | None
    difference_db: float | None = None
    flags: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, float | None]:
        """The table's figures by column key."""
        return {"f0_rmse_cents": self.pitch.rmse_cents, "f0_corr": self.pitch.correlation,
                "vuv_error": self.pitch.vuv_error, "speaker_target": self.speaker_target,
                "speaker_source": self.speaker_source, "dc_offset": self.dc_offset,
                "silence_dbfs": self.silence.result_dbfs, "hop_buzz_db": self.hop_buzz_db,
                "difference_db": self.difference_db}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["figures"] = self.figures()
        return data


def analyse_source(name: str, audio: np.ndarray, sampling_rate: int, *, tracker: str = DEFAULT_TRACKER,
                   hop_seconds: float = DEFAULT_HOP_SECONDS, with_speaker: bool = True) -> SourceAnalysis:
    embedding = speaker.embed(audio, sampling_rate) if with_speaker else None
    return SourceAnalysis(name, audio, sampling_rate, track_f0(audio, sampling_rate, tracker, hop_seconds),
                          embedding)


def measure(source: SourceAnalysis, result: np.ndarray, result_name: str, *, semitones: float = 0.0,
            target_embedding: np.ndarray | None = None, tracker: str = DEFAULT_TRACKER,
            hop_seconds: float = DEFAULT_HOP_SECONDS, hop_length: int = 512) -> FileReport:
    """Every figure of `result` (mono, at the source's sampling rate) against `source`."""
    sr = source.sampling_rate
    result = np.asarray(result, dtype=np.float64)
    pitch = f0_metrics(source.f0, track_f0(result, sr, tracker, hop_seconds), semitones)
    with_speaker = source.embedding is not None or target_embedding is not None
    embedding = speaker.embed(result, sr) if with_speaker else None
    silence = artefacts.level_in_source_silence(source.audio, result, sr)
    dc = artefacts.dc_offset(result)
    buzz = hop_buzz_db(_track_at_hop(source.f0, hop_seconds, sr, hop_length, len(result)), result - dc,
                       semitones, sr, hop_length)
    return FileReport(name=source.name, result=result_name, pitch=pitch,
                      speaker_target=speaker.similarity(embedding, target_embedding),
                      speaker_source=speaker.similarity(embedding, source.embedding),
                      source_to_target=speaker.similarity(source.embedding, target_embedding),
                      dc_offset=dc, silence=silence, hop_buzz_db=buzz, flags=artefacts.flags(dc, silence))


def _track_at_hop(f0: np.ndarray, hop_seconds: float, sampling_rate: int, hop_length: int, samples: int) -> np.ndarray:
    """An f0 track resampled (nearest frame) to one value per `hop_length` samples."""
    times = np.arange(samples // hop_length) * hop_length / sampling_rate
    index = np.minimum(np.rint(times / hop_seconds).astype(int), len(f0) - 1)
    return np.asarray(f0)[index] if len(f0) else np.zeros(len(times))


def overall(reports: list[FileReport]) -> dict[str, float | None]:
    """The mean of each figure over the files that have it (None where none has)."""
    means = {}
    for key in COLUMNS:
        values = [r.figures()[key] for r in reports if r.figures()[key] is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


def format_value(key: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return COLUMNS[key][1].format(value)


def table(rows: list[tuple[str, dict[str, float | None]]], keys: list[str] | None = None) -> str:
    """A plain-text table: one row per (label, figures), one column per figure key."""
    keys = keys or [k for k in COLUMNS if any(figures.get(k) is not None for _, figures in rows)]
    header = ["", *(COLUMNS[k][0] for k in keys)]
    body = [[label, *(format_value(k, figures.get(k)) for k in keys)] for label, figures in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
