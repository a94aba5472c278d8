"""The So-VITS graph MoeVoiceStudio runs (moevoicestudio.md §C3) and its export.

Inputs, in order: c `[1, T_units, ssl_dim]` float32 (content units as the encoder gives them),
f0 `[1, F]` float32 Hz (unvoiced frames already interpolated), mel2ph `[1, F]` int64 (1-based unit index per
frame, 0 = a zero frame), uv `[1, F]` float32, noise `[1, inter_channels, F]` float32 (already scaled by the
noise scale), sid (int64 `[1]` character index, or with CharaMix float32 `[F, S]` per-frame weights), and
vol `[1, F]` float32 for models with vol_embedding. Output: audio `[1, 1, F·hop]` float32.

`SovitsOnnx` wraps a weight-norm-free copy of the trained `SynthesizerTrn` and reuses its submodules:
units are gathered per frame, the speaker comes from a table of the characters' `emb_g` rows baked in at
export time, the prior uses the given noise (z = m + noise·exp(logs)), the flow runs in reverse, and the
decoder runs its own forward with `m_source` swapped for the frame-rate source of onnxexport.source.

Exporter: torch.onnx.export with dynamo=False (the TorchScript tracer), opset 16, as 4.1 and MoeVS use.
The tracer needs nothing beyond torch and gives the op set MoeVS's ONNX Runtime builds are known to run;
the dynamo exporter would add onnxscript as a dependency and emits newer-opset graphs. Tracing records the
Python-side shape arithmetic of one dummy length; the parity check runs other lengths to prove the axes
really are dynamic (the graph has been checked from 1 frame up).
"""
from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.dsp import f0_to_coarse
from core.fileio import atomic_path
from onnxexport.source import FrameRateSource

OPSET = 16
INPUT_NAMES = ("c", "f0", "mel2ph", "uv", "noise", "sid", "vol")
OUTPUT_NAME = "audio"


class SovitsOnnx(nn.Module):
    """forward(c, f0, mel2ph, uv, noise, sid[, vol]) -> audio; see the module doc for the tensors."""

    def __init__(self, model: nn.Module, speaker_ids: Sequence[int], chara_mix: bool, source_noise: bool = False):
        super().__init__()
        model = export_copy(model)
        model.dec.m_source = FrameRateSource(model.dec.m_source.l_linear, model.config.sampling_rate,
                                             random=source_noise)
        self.model = model
        self.chara_mix = chara_mix
        self.volume = bool(model.config.vol_embedding)
        self.register_buffer("speakers", model.emb_g.weight.detach()[list(speaker_ids)].clone())  # [S, gin]

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES if self.volume else INPUT_NAMES[:-1]

    def forward(self, c: torch.Tensor, f0: torch.Tensor, mel2ph: torch.Tensor, uv: torch.Tensor,
                noise: torch.Tensor, sid: torch.Tensor, vol: torch.Tensor | None = None) -> torch.Tensor:
        units = F.pad(c, (0, 0, 1, 0))  # [1, 1 + T_units, H]: row 0 is the zero frame
        index = mel2ph.unsqueeze(2).expand(-1, -1, units.shape[2])  # [1, F, H]
        c = torch.gather(units, 1, index).transpose(1, 2)  # [1, H, F]
        g = self.speaker(sid)
        x_mask = torch.ones_like(f0).unsqueeze(1)  # [1, 1, F]
        x = self.model.content_embedding(c, uv, x_mask, vol)
        z_p, _, _, _ = self.model.enc_p(x, x_mask, f0_to_coarse(f0), noise=noise)
        z = self.model.flow(z_p, x_mask, g=g, reverse=True)
        return self.model.dec(z * x_mask, f0, g=g)  # [1, 1, F·hop]

    def speaker(self, sid: torch.Tensor) -> torch.Tensor:
        """Mix weights `[F, S]` -> `[1, gin, F]`; character index `[1]` -> `[1, gin, 1]`."""
        if self.chara_mix:
            return torch.matmul(sid, self.speakers).transpose(0, 1).unsqueeze(0)
        return self.speakers[sid].unsqueeze(-1)


def export_copy(model: nn.Module) -> nn.Module:
    """A fresh `SynthesizerTrn` with the same config and weights, weight norm folded (deepcopy cannot copy
    weight-normed modules once they have run)."""
    clone = type(model).from_dims(model.config)
    clone.load_state_dict(model.state_dict())
    clone.remove_weight_norm()
    return clone.eval()


def dynamic_axes(names: Sequence[str], chara_mix: bool) -> dict[str, dict[int, str]]:
    """§C3's dynamic axes (c's batch axis too, as 4.1 declares it), plus the output's sample axis."""
    axes = {"c": {0: "batch", 1: "units"}, "f0": {1: "frames"}, "mel2ph": {1: "frames"}, "uv": {1: "frames"},
            "noise": {2: "frames"}, "vol": {1: "frames"}}
    if chara_mix:
        axes["sid"] = {0: "frames"}
    axes = {name: axes[name] for name in names if name in axes}
    axes[OUTPUT_NAME] = {2: "samples"}
    return axes


def export_graph(wrapper: SovitsOnnx, dummy: Mapping[str, np.ndarray], path: str | os.PathLike,
                 opset: int = OPSET) -> None:
    """Trace `wrapper` on the `dummy` inputs and write the ONNX file atomically."""
    names = wrapper.input_names
    args = tuple(torch.from_numpy(np.asarray(dummy[name])) for name in names)
    with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic, deprecations
        torch.onnx.export(wrapper, args, str(tmp), input_names=list(names), output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic_axes(names, wrapper.chara_mix), opset_version=opset,
                          do_constant_folding=True, dynamo=False)
