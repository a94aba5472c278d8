"""Gathering a speaker's content features (`*.wav.soft.pt`, `[1, D, T_enc]`) for clustering and indexing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from loguru import logger

from core.errors import SvcError
from core.feature_io import load_units

SOFT_SUFFIX = ".soft.pt"


def soft_files(speaker_dir: Path) -> list[Path]:
    """Every `*.soft.pt` below `speaker_dir` (nested folders included), in a stable order."""
    return sorted(p for p in Path(speaker_dir).rglob(f"*{SOFT_SUFFIX}") if p.is_file() and not p.name.startswith("."))


def load_speaker_features(speaker_dir: Path) -> np.ndarray:
    """Concatenate a speaker's unit files as rows: -> float32 `[sum T_enc, D]` (empty `[0, 0]` if none)."""
    rows = []
    for path in soft_files(speaker_dir):
        units = load_units(path)[0]  # [D, T]; never runs code from the file
        rows.append(units.float().T.numpy())  # [T, D]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    dims = {r.shape[1] for r in rows}
    if len(dims) > 1:
        raise SvcError(f"unit files under {speaker_dir} have different feature sizes {sorted(dims)}; "
                       "they were made by different speech encoders")
    features = np.concatenate(rows, axis=0).astype(np.float32, copy=False)
    logger.info(f"{speaker_dir.name}: {len(rows)} files, {features.shape[0]} frames of {features.shape[1]} dims")
    return features
