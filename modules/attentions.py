"""Transformer parts of the So-VITS model (spec §9.2): channel LayerNorm, multi-head attention over
`[B, C, T]` tensors (optionally with windowed relative positions), convolutional FFN, the prior encoder's
`Encoder` and the causal `FFT` stack used by the F0 decoder and the transformer flow.

Attribute names (`attn_layers`, `norm_layers_1`, `self_attn_layers`, `norm_layers_0`, `conv_q`, `emb_rel_k`,
`gamma`, `beta`, ...) are the 4.1 state-dict keys and must not change.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.commons import causal_or_same_pad, gated_activation, subsequent_mask, weight_norm


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of `[B, C, T]`; parameters are named `gamma`/`beta` as in 4.1."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


def relative_to_absolute(x: torch.Tensor) -> torch.Tensor:
    """Re-index relative-position logits: `[B, H, L, 2L-1]` (column r = offset r-(L-1)) -> `[B, H, L, L]`.

    Output[i, j] = x[i, j - i + L - 1]. Done by padding and reshaping (a skew), which is exact and exports
    to ONNX without gathers.
    """
    b, h, length, _ = x.shape
    x = F.pad(x, (0, 1))  # [B, H, L, 2L]
    x = F.pad(x.reshape(b, h, length * 2 * length), (0, length - 1))
    return x.reshape(b, h, length + 1, 2 * length - 1)[:, :, :length, length - 1:]


def absolute_to_relative(x: torch.Tensor) -> torch.Tensor:
    """Inverse skew: `[B, H, L, L]` -> `[B, H, L, 2L-1]` with output[i, j - i + L - 1] = x[i, j]."""
    b, h, length, _ = x.shape
    x = F.pad(x, (0, length - 1))  # [B, H, L, 2L-1]
    x = F.pad(x.reshape(b, h, length * (2 * length - 1)), (length, 0))
    return x.reshape(b, h, length, 2 * length)[:, :, :, 1:]


def band_to_absolute(x: torch.Tensor, window: int) -> torch.Tensor:
    """Banded relative logits `[B, H, L, 2w+1]` (column o = offset o-w) -> `[B, H, L, L]`, zero off the band.

    Output[i, j] = x[i, j - i + w] where |j - i| <= w. The same skew as `relative_to_absolute`, but the
    input holds only the 2w+1 offsets a window can see, so no `[L, 2L-1]` logits are ever computed.
    """
    b, h, length, _ = x.shape
    x = F.pad(x, (0, length))  # [B, H, L, L+2w+1]
    x = x.reshape(b, h, length * (length + 2 * window + 1))[:, :, :length * (length + 2 * window)]
    return x.reshape(b, h, length, length + 2 * window)[:, :, :, window:window + length]


def absolute_to_band(x: torch.Tensor, window: int) -> torch.Tensor:
    """Inverse of `band_to_absolute`: `[B, H, L, L]` -> `[B, H, L, 2w+1]` with output[i, o] = x[i, i + o - w]
    (0 where that key lies outside the sequence)."""
    b, h, length, _ = x.shape
    x = F.pad(x, (window, window + 1))  # [B, H, L, L+2w+1]
    x = F.pad(x.reshape(b, h, length * (length + 2 * window + 1)), (0, length))
    return x.reshape(b, h, length, length + 2 * window + 2)[:, :, :, :2 * window + 1]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with 1x1-conv projections on `[B, C, T]`.

    With `window_size`, learned relative key/value embeddings (shared across heads) cover offsets
    -window..window. `proximal_init` starts `conv_k` as a copy of `conv_q`.
    """

    def __init__(self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0,
                 window_size: int | None = None, proximal_init: bool = False):
        super().__init__()
        assert channels % n_heads == 0, "channels must divide into heads"
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window_size is not None:
            scale = self.k_channels ** -0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * scale)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * scale)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)
        if proximal_init:
            with torch.no_grad():
                self.conv_k.weight.copy_(self.conv_q.weight)
                self.conv_k.bias.copy_(self.conv_q.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, attn_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x (queries) `[B, C, T_q]`, context (keys/values) `[B, C, T_k]`, mask `[B or 1, 1, T_q, T_k]`."""
        b, channels, t_q = x.shape
        t_k = context.shape[2]
        query = self.conv_q(x).view(b, self.n_heads, self.k_channels, t_q).transpose(2, 3)  # [B, H, Tq, d]
        key = self.conv_k(context).view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)
        value = self.conv_v(context).view(b, self.n_heads, self.k_channels, t_k).transpose(2, 3)
        query = query / math.sqrt(self.k_channels)
        scores = torch.matmul(query, key.transpose(-2, -1))  # [B, H, Tq, Tk]
        inplace = not torch.is_grad_enabled()  # at inference, update the [B, H, T, T] scores without copies
        if self.window_size is not None:  # self-attention: Tq == Tk; only offsets within the window count
            rel_logits = torch.matmul(query, self.emb_rel_k.transpose(-2, -1).unsqueeze(0))  # [B, H, T, 2w+1]
            band = band_to_absolute(rel_logits, self.window_size)
            scores = scores.add_(band) if inplace else scores + band
        if attn_mask is not None:
            scores = scores.masked_fill_(attn_mask == 0, -1e4) if inplace else scores.masked_fill(attn_mask == 0, -1e4)
        weights = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(weights, value)  # [B, H, Tq, d]
        if self.window_size is not None:
            out = out + torch.matmul(absolute_to_band(weights, self.window_size), self.emb_rel_v.unsqueeze(0))
        out = out.transpose(2, 3).contiguous().view(b, channels, t_q)
        return self.conv_o(out)

    def _relative_embeddings(self, table: torch.Tensor, length: int) -> torch.Tensor:
        """Embeddings for offsets -(L-1)..L-1: the learned window, zero beyond it. `[1, 2L-1, d]`.

        The reference definition of the relative terms (`relative_to_absolute(q @ this^T)` and
        `absolute_to_relative(weights) @ this`); `forward` computes the same sums over the window only.

        Padding by L-1 on both sides and slicing from `window` needs no branch on L, so a traced (ONNX)
        graph stays valid for every length.
        """
        padded = F.pad(table, (0, 0, length - 1, length - 1))
        return padded[:, self.window_size:self.window_size + 2 * length - 1]


class FFN(nn.Module):
    """Two convolutions with ReLU between, masked; 'same' or causal padding on the time axis."""

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int,
                 p_dropout: float = 0.0, causal: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.causal = causal
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = self.conv_1(causal_or_same_pad(x * x_mask, self.kernel_size, self.causal))
        x = self.drop(torch.relu(x))
        x = self.conv_2(causal_or_same_pad(x * x_mask, self.kernel_size, self.causal))
        return x * x_mask


class Encoder(nn.Module):
    """Post-norm transformer encoder with relative-position self-attention (the prior encoder's `enc_`)."""

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int = 1, p_dropout: float = 0.0, window_size: int = 4):
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size)
            for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        """x `[B, C, T]`, x_mask `[B, 1, T]` -> `[B, C, T]`."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers,
                                             self.norm_layers_2):
            x = norm_1(x + self.drop(attn(x, x, attn_mask)))
            x = norm_2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


class FFT(nn.Module):
    """Causal transformer stack (self-attention sees only earlier frames, causal FFN, proximal init).

    With `gin_channels` (the transformer flow's coupling network) every layer first gates its input
    with a slice of `cond_layer(g)` through the shared `cond_pre` 1x1 conv, WaveNet style.
    """

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int = 1,
                 kernel_size: int = 1, p_dropout: float = 0.0, gin_channels: int = 0):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        if gin_channels:
            self.cond_pre = nn.Conv1d(hidden_channels, 2 * hidden_channels, 1)
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        self.drop = nn.Dropout(p_dropout)
        self.self_attn_layers = nn.ModuleList(
            MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, proximal_init=True)
            for _ in range(n_layers))
        self.norm_layers_0 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout, causal=True)
            for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x `[B, C, T]`, x_mask `[B, 1, T]`, g `[B, gin, 1 or T]` (flow only) -> `[B, C, T]`."""
        cond = self.cond_layer(g) if g is not None else None  # [B, 2C·layers, T or 1]
        attn_mask = subsequent_mask(x.shape[2], device=x.device, dtype=x.dtype)
        x = x * x_mask
        width = 2 * self.hidden_channels
        for i in range(self.n_layers):
            if cond is not None:
                x = gated_activation(self.cond_pre(x), cond[:, i * width:(i + 1) * width], self.hidden_channels)
            x = self.norm_layers_0[i](x + self.drop(self.self_attn_layers[i](x, x, attn_mask)))
            x = self.norm_layers_1[i](x + self.drop(self.ffn_layers[i](x, x_mask)))
        return x * x_mask
