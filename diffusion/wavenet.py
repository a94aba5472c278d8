"""WaveNet noise predictor of 4.1's shallow-diffusion model (DiffSinger layout, spec §11.3).

Module and parameter names follow the state dict of 4.1 checkpoints (`decoder.denoise_fn.*`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) diffusion steps: t [B] -> [B, dim], sin half first."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualLayer(nn.Module):
    """Gated residual block: step bias, k3 conv plus condition, sigmoid*tanh gate, split into residual and skip."""

    def __init__(self, n_chans: int, n_hidden: int, dilation: int = 1):
        super().__init__()
        self.dilated_conv = nn.Conv1d(n_chans, 2 * n_chans, 3, padding=dilation, dilation=dilation)
        self.diffusion_projection = nn.Linear(n_chans, n_chans)
        self.conditioner_projection = nn.Conv1d(n_hidden, 2 * n_chans, 1)
        self.output_projection = nn.Conv1d(n_chans, 2 * n_chans, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, T], cond [B, H, T], step [B, C] -> (residual output [B, C, T], skip [B, C, T])."""
        y = x + self.diffusion_projection(step)[:, :, None]
        y = self.dilated_conv(y) + self.conditioner_projection(cond)  # [B, 2C, T]
        gate, filt = y.chunk(2, dim=1)
        y = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt))  # [B, 2C, T]
        residual, skip = y.chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class WaveNet(nn.Module):
    """Predicts the noise in a normalised mel [B, M, T] given the diffusion step and the condition [B, H, T]."""

    def __init__(self, in_dims: int = 128, n_layers: int = 20, n_chans: int = 384, n_hidden: int = 256):
        super().__init__()
        self.n_chans = n_chans
        self.input_projection = nn.Conv1d(in_dims, n_chans, 1)
        self.mlp = nn.Sequential(nn.Linear(n_chans, 4 * n_chans), nn.Mish(), nn.Linear(4 * n_chans, n_chans))
        self.residual_layers = nn.ModuleList(ResidualLayer(n_chans, n_hidden) for _ in range(n_layers))
        self.skip_projection = nn.Conv1d(n_chans, n_chans, 1)
        self.output_projection = nn.Conv1d(n_chans, in_dims, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        convs = [self.input_projection, self.skip_projection]
        for layer in self.residual_layers:
            convs += [layer.dilated_conv, layer.conditioner_projection, layer.output_projection]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.zeros_(self.output_projection.weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, M, T], t [B] (step index, float allowed), cond [B, H, T] -> predicted noise [B, M, T]."""
        h = F.relu(self.input_projection(x))  # [B, C, T]
        step = self.mlp(step_embedding(t, self.n_chans))  # [B, C]
        skips = 0
        for layer in self.residual_layers:
            h, skip = layer(h, cond, step)
            skips = skips + skip
        h = skips / math.sqrt(len(self.residual_layers))
        h = F.relu(self.skip_projection(h))
        return self.output_projection(h)
