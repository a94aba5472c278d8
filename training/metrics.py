"""Validation figures at every eval_interval, and which checkpoint is the best so far.

For each validation item the generator synthesizes the clip from its true f0/uv/volume; the result is compared
with the recording: mel L1 (mean absolute difference of the natural-log mel spectrograms), F0 RMSE in cents,
F0 correlation and V/UV error (CREPE tiny on both, see evaluation.pitch), and, when Resemblyzer's weights are
installed, the speaker similarity of the two. The figures of the recordings are computed once per run.

`train.best_metric` in config.json names the figure that picks `G_best.pth` (default "mel_l1"); a config
without the key (4.1's) gets the default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError
from evaluation import speaker
from evaluation.pitch import f0_metrics, track_f0

EVAL_HOP_SECONDS = 0.04  # 25 pitch frames per second: enough for a validation figure, half the cost
EVAL_TRACKER = "crepe-tiny"
# figure -> True when higher is better
BEST_METRICS = {"mel_l1": False, "f0_rmse_cents": False, "f0_corr": True, "vuv_error": False, "speaker_sim": True}
DEFAULT_BEST_METRIC = "mel_l1"


def best_metric_of(train: Any) -> str:
    """`train.best_metric`, checked; the default for configs without it."""
    name = train.get("best_metric", DEFAULT_BEST_METRIC)
    if name not in BEST_METRICS:
        raise ConfigError(f"train.best_metric {name!r} is not a validation figure; use one of "
                          f"{', '.join(BEST_METRICS)}")
    if name == "speaker_sim" and not speaker.speaker_encoder_available():
        raise ConfigError(f"train.best_metric speaker_sim needs Resemblyzer's weights: {speaker.INSTALL}")
    return name


def is_better(metric: str, value: float | None, best: float | None) -> bool:
    if value is None or not np.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if BEST_METRICS[metric] else value < best


@dataclass
class ValidationFigures:
    """Accumulates per-item figures; the recordings' f0 tracks and embeddings are kept across evaluations."""

    sampling_rate: int
    reference_f0: dict[int, np.ndarray] = field(default_factory=dict)
    reference_embedding: dict[int, np.ndarray | None] = field(default_factory=dict)
    items: list[dict[str, float]] = field(default_factory=list)

    def start(self) -> None:
        self.items = []

    def add(self, index: int, generated: np.ndarray, recording: np.ndarray, mel_l1: float) -> None:
        if index not in self.reference_f0:
            self.reference_f0[index] = track_f0(recording, self.sampling_rate, EVAL_TRACKER, EVAL_HOP_SECONDS)
        pitch = f0_metrics(self.reference_f0[index],
                           track_f0(generated, self.sampling_rate, EVAL_TRACKER, EVAL_HOP_SECONDS))
        figures = {"mel_l1": mel_l1, "f0_rmse_cents": pitch.rmse_cents, "f0_corr": pitch.correlation,
                   "vuv_error": pitch.vuv_error}
        if speaker.speaker_encoder_available():
            if index not in self.reference_embedding:
                self.reference_embedding[index] = speaker.embed(recording, self.sampling_rate)
            figures["speaker_sim"] = speaker.similarity(speaker.embed(generated, self.sampling_rate),
                                                        self.reference_embedding[index])
        self.items.append(figures)

    def means(self) -> dict[str, float]:
        """The mean of each figure over the items that have it."""
        means = {}
        for name in BEST_METRICS:
            values = [item[name] for item in self.items if item.get(name) is not None]
            if values:
                means[name] = float(np.mean(values))
        return means
