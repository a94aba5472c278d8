"""Speech encoders: one registry, one interface (16 kHz mono float in, `[1, D, T]` at 50 frames/s out).

Modules are imported only when their encoder is asked for, so listing names and dimensions
(preprocess_flist_config.py) needs no model code.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from vencoder.encoder import SpeechEncoder


@dataclass(frozen=True)
class EncoderSpec:
    module: str      # module under vencoder/
    class_name: str  # SpeechEncoder subclass in that module
    dim: int         # feature dimension D
    file: str        # pretrained file name under pretrain/


ENCODERS: dict[str, EncoderSpec] = {
    "vec768l12": EncoderSpec("hubert", "ContentVec768L12", 768, "checkpoint_best_legacy_500.pt"),
    "vec256l9": EncoderSpec("hubert", "ContentVec256L9", 256, "checkpoint_best_legacy_500.pt"),
    "cnhubertlarge": EncoderSpec("hubert", "CNHubertLarge", 1024, "chinese-hubert-large-fairseq-ckpt.pt"),
    "hubertsoft": EncoderSpec("hubert_soft", "HubertSoft", 256, "hubert-soft-0d54a1f4.pt"),
    "dphubert": EncoderSpec("dphubert", "DPHubert", 768, "DPHuBERT-sp0.75.pth"),
    "wavlmbase+": EncoderSpec("wavlm", "WavLMBasePlus", 768, "WavLM-Base+.pt"),
    "whisper-ppg": EncoderSpec("whisper", "WhisperPPG", 1024, "medium.pt"),
    "whisper-ppg-large": EncoderSpec("whisper", "WhisperPPG", 1280, "large-v2.pt"),
    "whisper-ppg-small": EncoderSpec("whisper", "WhisperPPG", 768, "small.pt"),
    "whisper-ppg-base": EncoderSpec("whisper", "WhisperPPG", 512, "base.pt"),
    "vec256l9-onnx": EncoderSpec("onnx_encoder", "OnnxEncoder", 256, "vec-256-layer-9.onnx"),
    "vec256l12-onnx": EncoderSpec("onnx_encoder", "OnnxEncoder", 256, "vec-256-layer-12.onnx"),
    "vec768l9-onnx": EncoderSpec("onnx_encoder", "OnnxEncoder", 768, "vec-768-layer-9.onnx"),
    "vec768l12-onnx": EncoderSpec("onnx_encoder", "OnnxEncoder", 768, "vec-768-layer-12.onnx"),
    "hubertsoft-onnx": EncoderSpec("onnx_encoder", "OnnxEncoder", 256, "hubert-soft.onnx"),
}


def encoder_dim(name: str) -> int:
    return _spec(name).dim


def get_speech_encoder(name: str, device: str | torch.device | None = None,
                       pretrain_dir: str | Path = "pretrain") -> SpeechEncoder:
    """Build the encoder `name` from its pretrained file in `pretrain_dir` (clear error if missing)."""
    spec = _spec(name)
    module = importlib.import_module(f"vencoder.{spec.module}")
    encoder_class = getattr(module, spec.class_name)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return encoder_class(name=name, path=Path(pretrain_dir) / spec.file, device=device)


def _spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        from core.errors import ConfigError
        raise ConfigError(f"unknown speech encoder '{name}'; choose one of: {', '.join(ENCODERS)}") from None
