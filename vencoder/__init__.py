"""Speech encoders: one interface (16 kHz mono float in, `[1, D, T]` at 50 frames/s out), described by the
records of core.registry.

Neither torch nor an encoder module is imported until an encoder is built, so listing names and
dimensions (preprocess_flist_config.py) needs no model code.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from core.registry import ENCODER_RECORDS, EncoderRecord, encoder_record

if TYPE_CHECKING:
    import torch

    from vencoder.encoder import SpeechEncoder

ENCODERS: dict[str, EncoderRecord] = ENCODER_RECORDS


def encoder_dim(name: str) -> int:
    """Feature width of encoder `name` (ConfigError for an unknown name)."""
    return encoder_record(name).dim


def encoder_class(name: str) -> type[SpeechEncoder]:
    """The SpeechEncoder subclass of encoder `name` (its module is imported now)."""
    record = encoder_record(name)
    return getattr(importlib.import_module(record.module), record.class_name)


def get_speech_encoder(name: str, device: str | torch.device | None = None,
                       pretrain_dir: str | Path = "pretrain") -> SpeechEncoder:
    """Build the encoder `name` from its pretrained file in `pretrain_dir` (clear error if missing)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return encoder_class(name)(name=name, path=Path(pretrain_dir) / encoder_record(name).file,
                               device=torch.device(device))
