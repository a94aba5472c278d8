"""F0 predictors: one registry, one interface (`compute_f0_uv(wav, p_len) -> (f0, uv)`)."""
from __future__ import annotations

import importlib
from pathlib import Path

from f0_predictor.base import F0Predictor

F0_PREDICTORS: dict[str, tuple[str, str]] = {
    "pm": ("pm", "PMF0Predictor"),
    "dio": ("world", "DioF0Predictor"),
    "harvest": ("world", "HarvestF0Predictor"),
    "crepe": ("crepe", "CrepeF0Predictor"),
    "rmvpe": ("rmvpe", "RMVPEF0Predictor"),
    "fcpe": ("fcpe", "FCPEF0Predictor"),
}


def get_f0_predictor(name: str, hop_length: int = 512, sampling_rate: int = 44100, device: str | None = None,
                     threshold: float = 0.05, pretrain_dir: str | Path = "pretrain") -> F0Predictor:
    """Build the predictor `name`; neural ones load their weights once, here."""
    if name not in F0_PREDICTORS:
        from core.errors import ConfigError
        raise ConfigError(f"unknown f0 predictor '{name}'; choose one of: {', '.join(F0_PREDICTORS)}")
    module_name, class_name = F0_PREDICTORS[name]
    predictor_class = getattr(importlib.import_module(f"f0_predictor.{module_name}"), class_name)
    return predictor_class(hop_length=hop_length, sampling_rate=sampling_rate, device=device,
                           threshold=threshold, pretrain_dir=Path(pretrain_dir))
