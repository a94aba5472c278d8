"""Flow-side building blocks of the So-VITS model (spec §9.2): the WaveNet-style `WN` stack (optionally with
depthwise-separable dilated convs), mean-only affine couplings with a WN or a causal transformer as the
coupling network, channel flips, and the coupling blocks used as `SynthesizerTrn.flow`.

The depthwise choice is a constructor argument passed down explicitly (4.1 flipped a module global).
Attribute names (`in_layers`, `res_skip_layers`, `cond_layer`, `depth_conv`, `point_conv`, `pre`, `enc`,
`post`, `flows`, `wn`) are the 4.1 state-dict keys.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.attentions import FFT, LayerNorm
from modules.commons import gated_activation, remove_weight_norm, weight_norm

__all__ = ["LayerNorm", "DepthwiseSeparableConv1d", "WN", "Flip", "CouplingLayer", "ResidualCouplingBlock",
           "TransformerCouplingBlock"]


class DepthwiseSeparableConv1d(nn.Module):
    """A per-channel dilated conv (`depth_conv`) followed by a 1x1 mixing conv (`point_conv`), both weight-normed."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, padding: int = 0):
        super().__init__()
        self.depth_conv = weight_norm(nn.Conv1d(in_channels, in_channels, kernel_size, groups=in_channels,
                                                dilation=dilation, padding=padding))
        self.point_conv = weight_norm(nn.Conv1d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))

    def remove_weight_norm(self) -> None:
        remove_weight_norm(self.depth_conv)
        remove_weight_norm(self.point_conv)


class WN(nn.Module):
    """Non-causal WaveNet: gated dilated convs conditioned on g, residual and skip 1x1 convs.

    Layer i dilates by dilation_rate**i; its gate gets the i-th `2·hidden` slice of `cond_layer(g)`.
    The last layer has only a skip output. Returns the masked sum of skips.
    """

    def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, p_dropout: float = 0.0, depthwise: bool = False):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate ** i
            padding = (kernel_size * dilation - dilation) // 2
            if depthwise:
                in_layer = DepthwiseSeparableConv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation,
                                                    padding)
            else:
                in_layer = weight_norm(nn.Conv1d(hidden_channels, 2 * hidden_channels, kernel_size,
                                                 dilation=dilation, padding=padding))
            self.in_layers.append(in_layer)
            res_skip_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, res_skip_channels, 1)))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x `[B, hidden, T]`, x_mask `[B, 1, T]`, g `[B, gin, 1 or T]` -> `[B, hidden, T]`."""
        hidden = self.hidden_channels
        cond = self.cond_layer(g) if g is not None else None  # [B, 2·hidden·layers, 1 or T]
        output = torch.zeros_like(x)
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            x_in = in_layer(x)  # [B, 2·hidden, T]
            cond_i = cond[:, i * 2 * hidden:(i + 1) * 2 * hidden] if cond is not None else torch.zeros_like(x_in)
            res_skip = res_skip_layer(self.drop(gated_activation(x_in, cond_i, hidden)))
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :hidden]) * x_mask
                output = output + res_skip[:, hidden:]
            else:
                output = output + res_skip
        return output * x_mask

    def remove_weight_norm(self) -> None:
        if hasattr(self, "cond_layer"):
            remove_weight_norm(self.cond_layer)
        for layer in self.in_layers:
            layer.remove_weight_norm() if isinstance(layer, DepthwiseSeparableConv1d) else remove_weight_norm(layer)
        for layer in self.res_skip_layers:
            remove_weight_norm(layer)


class Flip(nn.Module):
    """Reverse the channel order (its own inverse)."""

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        return torch.flip(x, [1])


class CouplingLayer(nn.Module):
    """Mean-only affine coupling: the second channel half is shifted by a mean predicted from the first.

    `enc` is the coupling network (a WN or an FFT taking (h, mask, g)); several couplings may share one.
    `post` starts at zero so a fresh flow is the identity.
    """

    def __init__(self, channels: int, hidden_channels: int, enc: nn.Module):
        super().__init__()
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = enc
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        """x `[B, C, T]` -> `[B, C, T]`; `reverse` applies the inverse."""
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.enc(self.pre(x0) * x_mask, x_mask, g=g)
        mean = self.post(h) * x_mask
        x1 = (x1 - mean) * x_mask if reverse else mean + x1 * x_mask
        return torch.cat([x0, x1], 1)


class _CouplingBlock(nn.Module):
    """n_flows couplings, each followed by a Flip (ModuleList indices 0..2n-1, couplings at even indices).

    With a `shared` coupling network, the same module is registered under every coupling's `enc` and once
    more as `wn` (after `flows`), which is how 4.1's state dict lists it (duplicated keys included).
    """

    def __init__(self, channels: int, hidden_channels: int, n_flows: int, make_enc, share: bool):
        super().__init__()
        shared = make_enc() if share else None
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(CouplingLayer(channels, hidden_channels, shared if share else make_enc()))
            self.flows.append(Flip())
        if share:
            self.wn = shared

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        """x `[B, C, T]` -> z `[B, C, T]` (posterior -> prior space; the inverse with `reverse`)."""
        for flow in (reversed(self.flows) if reverse else self.flows):
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x

    def remove_weight_norm(self) -> None:
        for enc in {id(f.enc): f.enc for f in self.flows[::2]}.values():
            if isinstance(enc, WN):
                enc.remove_weight_norm()
            else:
                remove_weight_norm(enc.cond_layer)


class ResidualCouplingBlock(_CouplingBlock):
    """4.1's default flow: couplings whose network is a WN (kernel 5, dilation rate 1, `n_layers` layers)."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 n_flows: int = 4, gin_channels: int = 0, share_parameter: bool = False, depthwise: bool = False):
        def make_enc() -> WN:
            return WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels,
                      depthwise=depthwise)
        super().__init__(channels, hidden_channels, n_flows, make_enc, share_parameter)


class TransformerCouplingBlock(_CouplingBlock):
    """`use_transformer_flow`: couplings whose network is a g-conditioned causal FFT stack."""

    def __init__(self, channels: int, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int, p_dropout: float, n_flows: int = 4, gin_channels: int = 0,
                 share_parameter: bool = False):
        def make_enc() -> FFT:
            return FFT(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout,
                       gin_channels=gin_channels)
        super().__init__(channels, hidden_channels, n_flows, make_enc, share_parameter)
