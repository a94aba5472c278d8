"""The one interface every speech encoder implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch


class SpeechEncoder(ABC):
    """Turns 16 kHz mono audio into content features at 50 frames/s.

    Subclasses are built as `Cls(name=..., path=..., device=...)` by `vencoder.get_speech_encoder`,
    load their weights in `__init__` (raising MissingPretrainedError when the file is absent) and
    implement `encode`.
    """

    def __init__(self, name: str, path: Path, device: torch.device):
        self.name = name
        self.path = Path(path)
        self.device = torch.device(device)

    @abstractmethod
    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k: `[N]` float (a `[N, C]` input is averaged over C) -> features `[1, D, N // 320]` (approx.)."""

    runs_on_onnx: bool = False  # True where `traceable()` gives a module (vencoder.ort_encoder runs it)

    def traceable(self) -> torch.nn.Module | None:
        """A module mapping wav16k `[1, N]` to `encode`'s features `[1, D, T]` that torch.onnx can export with a
        dynamic N, or None."""
        return None

    def __call__(self, wav16k: torch.Tensor) -> torch.Tensor:
        if wav16k.dim() == 2:
            wav16k = wav16k.mean(dim=-1)
        with torch.inference_mode():
            return self.encode(wav16k.to(self.device, torch.float32))
