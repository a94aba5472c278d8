"""The NSF-HiFiGAN generator of openvpi's pretrained vocoder (spec §11.5).

HiFi-GAN V1 upsampling stacks fed, at every stage, with a harmonic excitation built from f0 (a
neural source-filter model). Modules are built without weight norm: `fuse_weight_norm` folds the
stored weight_g / weight_v pairs into plain weights when a checkpoint is loaded.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vdecoder.nsf_hifigan.config import VocoderConfig

LRELU_SLOPE = 0.1


def fuse_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every `X.weight_g` / `X.weight_v` pair by `X.weight = g * v / ||v||` (norm over all dims but 0)."""
    fused = {}
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        stem = f"{prefix}." if prefix else ""
        if name == "weight_v" and f"{stem}weight_g" in state:
            g = state[f"{stem}weight_g"]
            norm = value.norm(2, dim=tuple(range(1, value.dim())), keepdim=True)
            fused[f"{stem}weight"] = value * (g / norm)
        elif not (name == "weight_g" and f"{stem}weight_v" in state):
            fused[key] = value
    return fused


class ResBlock1(nn.Module):
    """Per dilation d: x + conv(lrelu(conv_d(lrelu(x)))), the second conv undilated."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=(kernel_size * d - d) // 2) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                                    for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """Per dilation d: x + conv_d(lrelu(x))."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                             padding=(kernel_size * d - d) // 2) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class SineSource(nn.Module):
    """f0 at frame rate -> harmonic excitation at sample rate, merged to one channel.

    Harmonics 1..n_harmonics+1 of f0, sine amplitude 0.1, voiced where f0 > 0, plus Gaussian noise
    (std 0.003 voiced, 0.1/3 unvoiced); merged by Linear(H -> 1) + tanh. The phase is accumulated at
    frame rate and only the within-frame part at sample rate, which keeps float error small for long
    inputs. Random draws, in this order: initial phases torch.rand(B, H), then the noise
    (randn_like of `[B, T * upp, H]`); `deterministic=True` uses zero phases and no noise.
    """

    def __init__(self, sampling_rate: int, n_harmonics: int = 8, sine_amp: float = 0.1, noise_std: float = 0.003):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.n_sines = n_harmonics + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.l_linear = nn.Linear(self.n_sines, 1)

    def forward(self, f0: torch.Tensor, upp: int, deterministic: bool = False) -> torch.Tensor:
        """f0 `[B, T]` in Hz (0 = unvoiced) -> excitation `[B, T * upp, 1]`."""
        with torch.no_grad():
            sines = self.harmonic_sines(f0, upp, deterministic)                # [B, T * upp, H]
            uv = F.interpolate((f0 > 0).float()[:, None], scale_factor=upp, mode="nearest")
            uv = uv.transpose(1, 2)                                            # [B, T * upp, 1]
            if not deterministic:
                noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
                sines = sines * uv + noise_amp * torch.randn_like(sines)
            else:
                sines = sines * uv
        return torch.tanh(self.l_linear(sines))

    def harmonic_sines(self, f0: torch.Tensor, upp: int, deterministic: bool) -> torch.Tensor:
        """`[B, T]` -> `0.1 * sin(2 pi phase)` `[B, T * upp, H]`; phase from frame-rate increments."""
        B = f0.shape[0]
        harmonics = torch.arange(1, self.n_sines + 1, device=f0.device, dtype=f0.dtype)
        increments = (f0[..., None] * harmonics / self.sampling_rate) % 1         # [B, T, H] cycles/sample
        if not deterministic:
            initial = torch.rand(B, self.n_sines, device=f0.device)
            initial[:, 0] = 0
            increments = torch.cat([increments[:, :1] + initial[:, None], increments[:, 1:]], dim=1)
        frame_phase = torch.cumsum(increments.double(), dim=1).float() * upp     # [B, T, H] phase at frame ends
        frame_phase = F.interpolate(frame_phase.transpose(1, 2), scale_factor=upp, mode="linear",
                                    align_corners=True).transpose(1, 2) % 1   # [B, T * upp, H]
        wraps = torch.zeros_like(frame_phase)
        wraps[:, 1:] = -((frame_phase[:, 1:] - frame_phase[:, :-1]) < 0).float()
        sample_increments = F.interpolate(increments.transpose(1, 2), scale_factor=upp,
                                          mode="nearest").transpose(1, 2)      # [B, T * upp, H]
        phase = torch.cumsum((sample_increments + wraps).double(), dim=1)
        return (torch.sin(2 * math.pi * phase) * self.sine_amp).float()


class Generator(nn.Module):
    """mel `[B, num_mels, T]` + f0 `[B, T]` -> audio `[B, 1, T * hop]` in [-1, 1]."""

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        self.upp = math.prod(config.upsample_rates)
        self.n_kernels = len(config.resblock_kernel_sizes)
        self.m_source = SineSource(config.sampling_rate)
        width = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, width, 7, padding=3)
        resblock = ResBlock1 if str(config.resblock) == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.noise_convs = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        rates = config.upsample_rates
        for i, (rate, kernel) in enumerate(zip(rates, config.upsample_kernel_sizes)):
            c_in, c_out = width // 2 ** i, width // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2))
            stride = math.prod(rates[i + 1:])  # samples per step of this stage
            if i + 1 < len(rates):
                self.noise_convs.append(nn.Conv1d(1, c_out, 2 * stride, stride=stride, padding=stride // 2))
            else:
                self.noise_convs.append(nn.Conv1d(1, c_out, 1))
            for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(resblock(c_out, k, tuple(dilations)))
        self.conv_post = nn.Conv1d(width // 2 ** len(rates), 1, 7, padding=3)

    def forward(self, mel: torch.Tensor, f0: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        source = self.m_source(f0, self.upp, deterministic).transpose(1, 2)  # [B, 1, T * upp]
        x = self.conv_pre(mel)                                                # [B, C, T]
        for i, (up, noise_conv) in enumerate(zip(self.ups, self.noise_convs)):
            x = up(F.leaky_relu(x, LRELU_SLOPE)) + noise_conv(source)         # [B, C / 2^(i+1), T * ...]
            blocks = self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels]
            x = sum(block(x) for block in blocks) / self.n_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as trained
        return torch.tanh(x)
