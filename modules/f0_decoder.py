"""The automatic F0 predictor of So-VITS (`SynthesizerTrn.f0_decoder`, spec §9.2) and the log-f0
conversions it is trained on (spec §6.5).

lf0 = 2595·log10(1 + f0/700) / 500; the decoder sees lf0 minus its voiced-frame mean (times a random
factor in training) and predicts lf0 itself.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.attentions import FFT
from core.errors import SvcError


class F0NormalizationError(SvcError):
    """The normalised log-f0 holds NaN (4.1 silently exited with status 0 here)."""


def f0_to_lf0(f0_hz: torch.Tensor) -> torch.Tensor:
    """f0 in Hz `[B, T]` -> scaled log-f0 `[B, 1, T]`."""
    return 2595.0 * torch.log10(1.0 + f0_hz.unsqueeze(1) / 700.0) / 500


def lf0_to_f0(lf0: torch.Tensor) -> torch.Tensor:
    """Scaled log-f0 `[B, 1, T]` -> f0 in Hz `[B, T]`."""
    return (700 * (torch.pow(10, lf0 * 500 / 2595) - 1)).squeeze(1)


def normalize_f0(lf0: torch.Tensor, x_mask: torch.Tensor, uv: torch.Tensor, random_scale: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Subtract each item's mean lf0 over voiced frames, optionally scale by U(0.8, 1.2), and mask.

    lf0 `[B, 1, T]`, x_mask `[B, 1, T]`, uv `[B, T]` (1 = voiced) -> `[B, 1, T]`. An item without voiced
    frames divides by 9999 instead of 0, as 4.1 does. Raises F0NormalizationError on NaN.
    """
    voiced = torch.sum(uv, dim=1, keepdim=True)  # [B, 1]
    voiced = torch.where(voiced == 0, torch.full_like(voiced, 9999), voiced)
    means = torch.sum(lf0[:, 0, :] * uv, dim=1, keepdim=True) / voiced  # [B, 1]
    factor = torch.ones(lf0.shape[0], 1, device=lf0.device, dtype=lf0.dtype)
    if random_scale:
        factor.uniform_(0.8, 1.2, generator=generator)
    normed = (lf0 - means.unsqueeze(-1)) * factor.unsqueeze(-1)
    if torch.isnan(normed).any():
        raise F0NormalizationError("normalised log-f0 contains NaN; check the f0 input (.f0.npy files "
                                   "must hold finite Hz values, 0 for unvoiced frames)")
    return normed * x_mask


class F0Decoder(nn.Module):
    """Predicts lf0 `[B, 1, T]` from detached content features, the normalised input lf0 and the speaker."""

    def __init__(self, out_channels: int, hidden_channels: int, filter_channels: int, n_heads: int,
                 n_layers: int, kernel_size: int, p_dropout: float, spk_channels: int = 0):
        super().__init__()
        self.prenet = nn.Conv1d(hidden_channels, hidden_channels, 3, padding=1)
        self.decoder = FFT(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.proj = nn.Conv1d(hidden_channels, out_channels, 1)
        self.f0_prenet = nn.Conv1d(1, hidden_channels, 3, padding=1)
        self.cond = nn.Conv1d(spk_channels, hidden_channels, 1)

    def forward(self, x: torch.Tensor, norm_lf0: torch.Tensor, x_mask: torch.Tensor,
                spk_emb: torch.Tensor | None = None) -> torch.Tensor:
        """x `[B, hidden, T]` (gradient stopped here), norm_lf0 `[B, 1, T]`, x_mask `[B, 1, T]`,
        spk_emb `[B, gin, 1 or T]` -> predicted lf0 `[B, out, T]`."""
        x = x.detach()
        if spk_emb is not None:
            x = x + self.cond(spk_emb)
        x = x + self.f0_prenet(norm_lf0)
        x = self.prenet(x) * x_mask
        x = self.decoder(x * x_mask, x_mask)
        return self.proj(x) * x_mask
