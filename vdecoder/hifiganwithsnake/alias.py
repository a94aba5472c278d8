"""Anti-aliased SnakeBeta activation of the `nsf-snake-hifigan` decoder (spec §9.4).

The activation runs at twice the rate: upsample x2 with a windowed-sinc low-pass, apply
x + sin²(αx)/β per channel (α, β stored as logs), low-pass and decimate x2. Both 12-tap Kaiser-windowed
sinc filters are buffers saved in the state dict (`upsample.filter`, `downsample.lowpass.filter`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Low-pass FIR `[1, 1, kernel_size]` (cutoff and transition half-width as fractions of the sample rate).

    The Kaiser β follows Kaiser's empirical formula for the attenuation reachable with this length and
    transition width; taps are normalised to sum 1 (unit DC gain).
    """
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta)
    offset = 0.5 if kernel_size % 2 == 0 else 0.0
    time = torch.arange(-half, half + (kernel_size % 2)) + offset
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    """Zero-stuffing x`ratio` upsampler followed by the low-pass (as one transposed conv), replicate-padded."""

    def __init__(self, channels: int, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.channels = channels
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T] -> [B, C, ratio·T]`."""
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        weight = self.filter.expand(self.channels, -1, -1)
        x = self.ratio * F.conv_transpose1d(x, weight, stride=self.ratio, groups=self.channels)
        return x[..., self.crop_left:x.shape[-1] - self.crop_right]


class LowPassFilter1d(nn.Module):
    """Depthwise FIR low-pass with replicate padding and an optional decimating stride."""

    def __init__(self, channels: int, cutoff: float, half_width: float, stride: int, kernel_size: int):
        super().__init__()
        self.channels = channels
        self.stride = stride
        self.pad_left = kernel_size // 2 - int(kernel_size % 2 == 0)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(self.channels, -1, -1), stride=self.stride, groups=self.channels)


class DownSample1d(nn.Module):
    """Low-pass then keep every `ratio`-th sample: `[B, C, ratio·T] -> [B, C, T]`."""

    def __init__(self, channels: int, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(channels, 0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin²(exp(alpha)·x) / exp(beta), per channel of `[B, C, T]`; alpha = beta = 0 at init."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(self.alpha)[None, :, None]
        beta = torch.exp(self.beta)[None, :, None]
        return x + 1.0 / (beta + 1e-9) * torch.sin(x * alpha).pow(2)


class SnakeAlias(nn.Module):
    """SnakeBeta applied at twice the sample rate to keep its harmonics from aliasing."""

    def __init__(self, channels: int, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d(channels, ratio, kernel_size)
        self.downsample = DownSample1d(channels, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))
