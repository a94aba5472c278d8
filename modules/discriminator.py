"""The GAN discriminators of So-VITS training (spec §10.4), state-dict compatible with 4.1's `D_<step>.pth`.

`MultiPeriodDiscriminator` holds one scale discriminator (`DiscriminatorS`, 1-D convs on the waveform) and
five period discriminators (`DiscriminatorP`, the waveform folded into `[T/p, p]`) in `discriminators`.
Attribute names (`discriminators`, `convs`, `conv_post`) and the weight-norm split into `weight_g`/`weight_v`
are the on-disk format and must stay as they are.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import remove_weight_norm, spectral_norm, weight_norm

LRELU_SLOPE = 0.1
PERIODS = (2, 3, 5, 7, 11)

# (in, out, kernel, stride, groups, padding) of DiscriminatorS' convs.
SCALE_LAYERS = (
    (1, 16, 15, 1, 1, 7),
    (16, 64, 41, 4, 4, 20),
    (64, 256, 41, 4, 16, 20),
    (256, 1024, 41, 4, 64, 20),
    (1024, 1024, 41, 4, 256, 20),
    (1024, 1024, 5, 1, 1, 2),
)
# (in, out, stride) of DiscriminatorP's (5, 1) convs.
PERIOD_LAYERS = ((1, 32, 3), (32, 128, 3), (128, 512, 3), (512, 1024, 3), (1024, 1024, 1))
PERIOD_KERNEL = 5

FeatureMaps = list[torch.Tensor]


def _norm(use_spectral_norm: bool) -> Callable[[nn.Module], nn.Module]:
    return spectral_norm if use_spectral_norm else _weight_norm


def _weight_norm(module: nn.Module) -> nn.Module:
    """torch's original weight norm: it stores `weight_g`/`weight_v`, the names 4.1's files use (the newer
    parametrization API would store `parametrizations.weight.original0/1`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return weight_norm(module)


class _TimeConv(nn.Conv2d):
    """A Conv2d with a (k, 1) kernel that takes `[N, C, H]` and runs as a Conv1d on its own 4-D weight.

    Going through the module call keeps weight-norm/spectral-norm pre-hooks working; the state dict is a
    plain Conv2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight.squeeze(-1), self.bias, stride=self.stride[0], padding=self.padding[0])


def _narrow(channels: int, divisor: int) -> int:
    return max(1, channels // divisor)


class DiscriminatorS(nn.Module):
    """Scale discriminator on the raw waveform. `width_divisor` > 1 narrows every layer (not 4.1's shapes)."""

    def __init__(self, use_spectral_norm: bool = False, width_divisor: int = 1):
        super().__init__()
        norm, d = _norm(use_spectral_norm), width_divisor
        self.use_spectral_norm = use_spectral_norm
        self.convs = nn.ModuleList(
            norm(nn.Conv1d(c_in if c_in == 1 else _narrow(c_in, d), _narrow(c_out, d), k, s,
                           groups=_narrow(g, d), padding=p))
            for c_in, c_out, k, s, g, p in SCALE_LAYERS
        )
        self.conv_post = norm(nn.Conv1d(_narrow(1024, d), 1, 3, 1, padding=1))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
        """audio `[B, 1, N]` -> (logits `[B, N']`, feature maps after every conv)."""
        x = audio
        fmaps = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmaps.append(x)
        x = self.conv_post(x)
        fmaps.append(x)
        return torch.flatten(x, 1), fmaps

    def remove_weight_norm(self) -> None:
        if not self.use_spectral_norm:
            for conv in [*self.convs, self.conv_post]:
                remove_weight_norm(conv)


class DiscriminatorP(nn.Module):
    """Period discriminator: the waveform folded to `[B, 1, N/p, p]`, convolved along time with (5, 1) kernels.

    A (k, 1) 2-D conv over `[B, C, H, p]` equals a 1-D conv over `[B·p, C, H]`, which CPUs run much faster,
    so the forward pass uses the 1-D form with the stored 4-D weights (shapes unchanged on disk). Feature
    maps come out as `[B·p, C, H]`, the same values as 4.1's `[B, C, H, p]` in another order; every loss
    on them is a mean over all elements and does not see the order.
    """

    def __init__(self, period: int, use_spectral_norm: bool = False, width_divisor: int = 1):
        super().__init__()
        norm, d = _norm(use_spectral_norm), width_divisor
        self.period = period
        self.use_spectral_norm = use_spectral_norm
        pad = (PERIOD_KERNEL - 1) // 2
        self.convs = nn.ModuleList(
            norm(_TimeConv(c_in if c_in == 1 else _narrow(c_in, d), _narrow(c_out, d), (PERIOD_KERNEL, 1), (s, 1),
                           padding=(pad, 0)))
            for c_in, c_out, s in PERIOD_LAYERS
        )
        self.conv_post = norm(_TimeConv(_narrow(1024, d), 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
        """audio `[B, 1, N]` -> (logits `[B, N']`, feature maps after every conv)."""
        batch, channels, length = audio.shape
        if length % self.period:
            audio = F.pad(audio, (0, self.period - length % self.period), "reflect")
        x = audio.view(batch, channels, -1, self.period)  # [B, 1, H, p]
        x = x.permute(0, 3, 1, 2).reshape(batch * self.period, channels, -1)  # [B·p, 1, H]
        fmaps = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmaps.append(x)
        x = self.conv_post(x)  # [B·p, 1, H']
        fmaps.append(x)
        logits = x.view(batch, self.period, -1).transpose(1, 2).reshape(batch, -1)  # 4.1's [B, H'·p] order
        return logits, fmaps

    def remove_weight_norm(self) -> None:
        if not self.use_spectral_norm:
            for conv in [*self.convs, self.conv_post]:
                remove_weight_norm(conv)


class MultiPeriodDiscriminator(nn.Module):
    """One scale and five period discriminators; returns what the GAN losses need.

    `width_divisor` (config `model.discriminator_width_divisor`, not a 4.1 key) divides every channel count,
    for quick experiments and tests on a CPU; the default 1 is 4.1's discriminator (46.7 M parameters).
    """

    def __init__(self, use_spectral_norm: bool = False, width_divisor: int = 1):
        super().__init__()
        if width_divisor < 1:
            raise ValueError(f"width_divisor must be at least 1, got {width_divisor}")
        self.discriminators = nn.ModuleList([
            DiscriminatorS(use_spectral_norm, width_divisor),
            *(DiscriminatorP(p, use_spectral_norm, width_divisor) for p in PERIODS),
        ])

    def forward(self, real: torch.Tensor, fake: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[FeatureMaps], list[FeatureMaps]]:
        """real, fake `[B, 1, N]` -> (real logits, fake logits, real feature maps, fake feature maps), one per
        sub-discriminator. Both go through each sub-discriminator as one batch."""
        batch = real.shape[0]
        both = torch.cat([real, fake], dim=0)  # [2B, 1, N]
        real_logits, fake_logits, real_fmaps, fake_fmaps = [], [], [], []
        for disc in self.discriminators:
            logits, fmaps = disc(both)
            real_logits.append(logits[:batch])
            fake_logits.append(logits[batch:])
            real_fmaps.append([_half(f, disc, batch, first=True) for f in fmaps])
            fake_fmaps.append([_half(f, disc, batch, first=False) for f in fmaps])
        return real_logits, fake_logits, real_fmaps, fake_fmaps

    def score(self, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[FeatureMaps]]:
        """One signal `[B, 1, N]` -> (logits, feature maps) per sub-discriminator."""
        results = [disc(audio) for disc in self.discriminators]
        return [logits for logits, _ in results], [fmaps for _, fmaps in results]

    def remove_weight_norm(self) -> None:
        for disc in self.discriminators:
            disc.remove_weight_norm()


def _half(fmap: torch.Tensor, disc: nn.Module, batch: int, first: bool) -> torch.Tensor:
    """The real (first) or fake half of a feature map computed on `cat([real, fake])`."""
    rows = batch * getattr(disc, "period", 1)  # period maps are [2B·p, C, H] with B·p rows per signal
    return fmap[:rows] if first else fmap[rows:]


def period_forward_2d(disc: DiscriminatorP, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """4.1's formulation of DiscriminatorP: fold `[B, 1, T]` to `[B, 1, T/p, p]` and run (k, 1) 2-D convs.

    Gives the same result as `DiscriminatorP.forward` (which runs the same weights as 1-D convs, faster on the
    CPU); kept as the reference that formulation is tested and benchmarked against.
    """
    def weight(conv: nn.Module) -> torch.Tensor:
        v = conv.weight_v
        norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
        return conv.weight_g * v / norm

    b, c, t = audio.shape
    if t % disc.period:
        audio = F.pad(audio, (0, disc.period - t % disc.period), "reflect")
    x = audio.view(b, c, -1, disc.period)
    fmaps = []
    for conv in disc.convs:
        x = F.leaky_relu(F.conv2d(x, weight(conv), conv.bias, conv.stride, conv.padding), 0.1)
        fmaps.append(x)
    x = F.conv2d(x, weight(disc.conv_post), disc.conv_post.bias, 1, (1, 0))
    fmaps.append(x)
    return torch.flatten(x, 1, -1), fmaps
