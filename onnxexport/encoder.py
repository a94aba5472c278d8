"""Content-encoder ONNX for MoeVoiceStudio's `hubert/` folder (moevoicestudio.md §C4), from our ContentVec.

`vec-<D>-layer-<L>` is the output of transformer layer L of the ContentVec checkpoint
(`checkpoint_best_legacy_500.pt`), passed through `final_proj` when D is 256 (vec256l9) and taken as is
when D is 768 (vec768l12). Input `source` float32 `[1, 1, N]` at 16 kHz, output `embed` `[1, T, D]`,
dynamic axes source {0, 2} and embed {1}. The same file also serves our own `vec*-onnx` encoders.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core.errors import SvcError
from core.fileio import atomic_path
from onnxexport.graph import OPSET
from onnxexport.parity import max_difference
from vencoder.hubert import load_fairseq_hubert
from vencoder.wav2vec2 import Wav2Vec2Model

SAMPLE_RATE = 16000
_NAME = re.compile(r"vec-(256|768)-layer-(\d+)")


def parse_encoder_name(name: str) -> tuple[int, bool]:
    """`vec-<D>-layer-<L>` -> (layer L, whether final_proj is applied)."""
    match = _NAME.fullmatch(name)
    if not match:
        raise SvcError(f"cannot export a content encoder named '{name}': only ContentVec layer outputs "
                       f"vec-768-layer-<L> and vec-256-layer-<L> (e.g. vec-768-layer-12, vec-256-layer-9) "
                       f"can be built from checkpoint_best_legacy_500.pt")
    return int(match[2]), match[1] == "256"


class ContentVecOnnx(nn.Module):
    """source `[1, 1, N]` -> embed `[1, T, D]`: one layer's output of a ContentVec model (+ final_proj)."""

    def __init__(self, model: Wav2Vec2Model, layer: int, project: bool):
        super().__init__()
        if not 1 <= layer <= len(model.layers):
            raise SvcError(f"the ContentVec checkpoint has {len(model.layers)} layers; layer {layer} was asked for")
        if project and model.final_proj is None:
            raise SvcError("the ContentVec checkpoint has no final_proj, which a 256-dim encoder needs")
        self.model = model
        self.layer = layer
        self.project = project

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        x = self.model(source[:, 0, :], output_layer=self.layer)  # [1, T, D]
        return self.model.final_proj(x) if self.project else x


def load_encoder(checkpoint: str | os.PathLike, name: str) -> ContentVecOnnx:
    """Our ContentVec module for `name`, weights from the fairseq checkpoint (CPU, eval)."""
    layer, project = parse_encoder_name(name)
    model = load_fairseq_hubert(Path(checkpoint), torch.device("cpu"), f"the {name} encoder export")
    return ContentVecOnnx(model, layer, project).eval()


def export_encoder(encoder: ContentVecOnnx, path: str | os.PathLike, opset: int = OPSET) -> None:
    """Trace on one second of audio and write the ONNX file atomically."""
    dummy = torch.randn(1, 1, SAMPLE_RATE, generator=torch.Generator().manual_seed(0)) * 0.1
    with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (dummy,), str(tmp), input_names=["source"], output_names=["embed"],
                          dynamic_axes={"source": {0: "batch", 2: "samples"}, "embed": {1: "frames"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)


def probe_audio(samples: int, seed: int) -> np.ndarray:
    """A voiced-like test input `[1, 1, N]` at 16 kHz: a harmonic tone with vibrato plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SAMPLE_RATE
    f0 = 160.0 * 2 ** (0.5 * np.sin(2 * np.pi * 4.0 * t) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2 + rng.normal(0, 0.01, samples)
    return wave.astype(np.float32).reshape(1, 1, samples)


def check_encoder_parity(encoder: ContentVecOnnx, path: str | os.PathLike, lengths: tuple[int, ...] = (16000, 23456),
                         tolerance: float = 1e-3) -> list[float]:
    """Max |onnx − torch| of `embed` at each input length; SvcError above `tolerance`."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diffs = []
    for index, samples in enumerate(lengths):
        source = probe_audio(samples, seed=index)
        embed = session.run(["embed"], {"source": source})[0]
        with torch.no_grad():
            expected = encoder(torch.from_numpy(source)).numpy()
        if embed.shape != expected.shape:
            raise SvcError(f"encoder parity: ONNX gave {embed.shape}, torch {expected.shape} for {samples} samples")
        diffs.append(max_difference(embed, expected, "encoder", f"{samples} samples", tolerance))
    return diffs
