"""Content encoders exported to ONNX (MoeVoiceStudio's vec-*-layer-*.onnx and hubert-soft.onnx).

Each file maps 16 kHz audio `[1, 1, N]` float32 to features `[1, T, D]` (output 0). onnxruntime runs
it on the CUDA provider when the device is any CUDA device and that provider is installed, else on
the CPU (4.1 only took the GPU for the exact string "cuda" and failed on "cuda:0", §19.37).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import torch

from core.errors import SvcError
from core.pretrained import require_pretrained
from vencoder.encoder import SpeechEncoder


def execution_providers(device: torch.device) -> list:
    """CUDA (on the device's index) then CPU for a CUDA device with the provider available; else CPU."""
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEncoder(SpeechEncoder):
    """vec256l9-onnx, vec256l12-onnx, vec768l9-onnx, vec768l12-onnx, hubertsoft-onnx."""

    def __init__(self, name: str, path: Path, device: torch.device):
        super().__init__(name, path, device)
        require_pretrained(self.path, f"speech encoder {name}")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=execution_providers(self.device))
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise SvcError(f"cannot load the ONNX model {self.path}: {str(error).strip().splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k `[N]` -> `[1, D, T]` (T as the model computes it, ~N // 320)."""
        audio = wav16k.detach().cpu().numpy().astype(np.float32).reshape(1, 1, -1)  # [1, 1, N]
        features = self.session.run(None, {self.input_name: audio})[0]               # [1, T, D]
        return torch.from_numpy(np.ascontiguousarray(features)).transpose(1, 2).to(self.device)
