"""F0 predictors: one interface (`compute_f0_uv(wav, p_len) -> (f0, uv)`), described by the records of
core.registry. Neither torch nor a predictor module is imported until a predictor is built."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from core.registry import F0_PREDICTOR_RECORDS, F0PredictorRecord, f0_predictor_record

if TYPE_CHECKING:
    from f0_predictor.base import F0Predictor

F0_PREDICTORS: dict[str, F0PredictorRecord] = F0_PREDICTOR_RECORDS


def get_f0_predictor(name: str, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                     threshold: float = 0.05, pretrain_dir: str | Path = "pretrain") -> F0Predictor:
    """Build the predictor `name`; neural ones load their weights once, here."""
    record = f0_predictor_record(name)
    predictor_class = getattr(importlib.import_module(record.module), record.class_name)
    return predictor_class(hop_length=hop_length, sampling_rate=sampling_rate, device=device,
                           threshold=threshold, pretrain_dir=Path(pretrain_dir))
