"""NSF-HiFiGAN generator used as So-VITS' decoder `dec` (spec §9.4, random draws §9.6).

A harmonic-plus-noise source at the sample rate (`m_source`) is injected after every upsampling stage of a
HiFiGAN generator conditioned on the speaker (`cond`). Attribute names (`m_source.l_linear`, `noise_convs`,
`conv_pre`, `ups`, `resblocks`, `convs1`, `convs2`, `conv_post`, `cond`) are the 4.1 state-dict keys.

`activation` (a factory `channels -> nn.Module`) swaps every LeakyReLU for a learned module; the
`nsf-snake-hifigan` variant in `vdecoder.hifiganwithsnake` uses it. Then the modules appear in the state dict
as `snakes.<i>`, `resblocks.<j>.activations.<k>` and `snake_post`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.commons import get_padding, rand, randn_like, remove_weight_norm, weight_norm

LRELU_SLOPE = 0.1
ActivationFactory = Callable[[int], nn.Module]


def to_sample_rate(frames: torch.Tensor, upp: int) -> torch.Tensor:
    """Repeat each frame value `upp` times (nearest upsampling): `[B, T] -> [B, T·upp]`."""
    batch, n_frames = frames.shape
    return frames.unsqueeze(-1).expand(batch, n_frames, upp).reshape(batch, n_frames * upp)


class SineGen(nn.Module):
    """Sines at f0 and its harmonics plus Gaussian noise; the excitation of the NSF source.

    Two phase computations with the same draws (uniform initial phases `[B, dim]`, then normal noise shaped
    like the output):
    - sample mode (4.1's training/inference path): f0 is repeated to the sample rate and the phase is the
      running sum of per-sample increments, with 1 subtracted where the running fraction wraps. The float32
      operations follow 4.1 in order, so the output is sample-exact given the same draws.
    - onnx mode (f0 at frame rate in, phase built per frame): each frame's start phase is the exclusive
      cumulative sum of whole-frame phase advances (fractional parts, in float64), and samples inside a
      frame add (j+1)·increment. 4.1's ONNX path gets the same phase with an interpolated cumulative sum
      that only locates the integer wrap corrections; those do not change sin(2π·phase), so the two agree
      up to float rounding, and this one loses no precision on long inputs.
    """

    def __init__(self, sampling_rate: int, harmonic_num: int = 0, sine_amp: float = 0.1, noise_std: float = 0.003,
                 voiced_threshold: float = 0.0):
        super().__init__()
        self.sampling_rate = sampling_rate
        self.dim = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold

    def forward(self, f0: torch.Tensor, upp: int, onnx_mode: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f0 `[B, T]` Hz at frame rate -> (sine+noise `[B, T·upp, dim]`, uv `[B, T·upp, 1]`, noise)."""
        with torch.no_grad():
            harmonics = torch.arange(1, self.dim + 1, device=f0.device, dtype=f0.dtype)
            if onnx_mode:
                phase = self._frame_phase(f0, upp, harmonics, generator)
                sines = torch.sin(phase * 2 * math.pi) * self.sine_amp
            else:
                f0_samples = to_sample_rate(f0, upp).unsqueeze(-1)  # [B, N, 1]
                sines = self._sample_sines(f0_samples * harmonics, generator) * self.sine_amp
            uv = to_sample_rate((f0 > self.voiced_threshold).to(f0.dtype), upp).unsqueeze(-1)  # [B, N, 1]
            noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
            noise = noise_amp * randn_like(sines, generator)
            return sines * uv + noise, uv, noise

    def _initial_phase(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random start phase per harmonic `[B, dim]`, 0 for the fundamental."""
        start = rand(like.shape[0], self.dim, like=like, generator=generator)
        start[:, 0] = 0
        return start

    def _sample_sines(self, f0_harmonics: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """f0·k per sample `[B, N, dim]` -> sin(2π·phase) `[B, N, dim]` (4.1's op order)."""
        increments = (f0_harmonics / self.sampling_rate) % 1
        increments[:, 0, :] = increments[:, 0, :] + self._initial_phase(increments, generator)
        wrapped = torch.cumsum(increments, 1) % 1
        shift = torch.zeros_like(increments)
        shift[:, 1:, :] = ((wrapped[:, 1:, :] - wrapped[:, :-1, :]) < 0) * -1.0
        return torch.sin(torch.cumsum(increments + shift, dim=1) * 2 * math.pi)

    def _frame_phase(self, f0: torch.Tensor, upp: int, harmonics: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
        """f0 `[B, T]` -> phase in cycles, in [0, 2), per sample `[B, T·upp, dim]`."""
        batch, frames = f0.shape
        increments = (f0.unsqueeze(-1) * harmonics / self.sampling_rate) % 1  # [B, T, dim] cycles/sample
        start = self._initial_phase(increments, generator).unsqueeze(1)  # [B, 1, dim]
        advance = ((increments * upp) % 1).double()  # whole-frame advance, fractional part
        frame_start = (torch.cumsum(advance, dim=1) - advance + start.double()) % 1  # [B, T, dim]
        ramp = torch.arange(1, upp + 1, device=f0.device, dtype=f0.dtype).view(1, 1, upp, 1)
        within = (increments.unsqueeze(2) * ramp) % 1  # [B, T, upp, dim]
        phase = frame_start.to(f0.dtype).unsqueeze(2) + within
        return phase.reshape(batch, frames * upp, self.dim)


class SourceModuleHnNSF(nn.Module):
    """Merges the sine generator's channels into one excitation with Linear(dim -> 1) and tanh."""

    def __init__(self, sampling_rate: int, harmonic_num: int = 0, sine_amp: float = 0.1, add_noise_std: float = 0.003,
                 voiced_threshold: float = 0.0):
        super().__init__()
        self.sine_amp = sine_amp
        self.l_sin_gen = SineGen(sampling_rate, harmonic_num, sine_amp, add_noise_std, voiced_threshold)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)
        self.l_tanh = nn.Tanh()

    def forward(self, f0: torch.Tensor, upp: int, onnx_mode: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f0 `[B, T]` -> (excitation `[B, N, 1]`, noise `[B, N, 1]`, uv `[B, N, 1]`), N = T·upp.

        The noise branch is drawn (and returned) although the decoder ignores it: 4.1 draws it, and the
        draw order decides every later random number.
        """
        sines, uv, _ = self.l_sin_gen(f0, upp, onnx_mode, generator)
        excitation = self.l_tanh(self.l_linear(sines))
        noise = randn_like(uv, generator) * self.sine_amp / 3
        return excitation, noise, uv


class ResBlock1(nn.Module):
    """Three pairs (dilated conv, conv) with residual adds; activation before each conv."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5),
                 activation: ActivationFactory | None = None):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation)
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=get_padding(kernel_size)))
            for _ in dilation)
        if activation is not None:
            self.activations = nn.ModuleList(activation(channels) for _ in range(2 * len(dilation)))

    def _act(self, index: int, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if hasattr(self, "activations"):
            return self.activations[index](x)
        return F.leaky_relu(x, LRELU_SLOPE, inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()  # without autograd, fresh conv outputs can be overwritten
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            h = self._act(2 * i + 1, conv1(self._act(2 * i, x)), inplace)
            x = conv2(h).add_(x) if inplace else x + conv2(h)
        return x

    def remove_weight_norm(self) -> None:
        for conv in [*self.convs1, *self.convs2]:
            remove_weight_norm(conv)


class ResBlock2(nn.Module):
    """Two dilated convs with residual adds (config `resblock` other than "1")."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3),
                 activation: ActivationFactory | None = None):
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilation[:2])
        if activation is not None:
            self.activations = nn.ModuleList(activation(channels) for _ in self.convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            act = self.activations[i](x) if hasattr(self, "activations") else F.leaky_relu(x, LRELU_SLOPE)
            x = x + conv(act)
        return x

    def remove_weight_norm(self) -> None:
        for conv in self.convs:
            remove_weight_norm(conv)


class Generator(nn.Module):
    """Latent z `[B, inter, T]` + f0 `[B, T]` + speaker g `[B, gin, 1 or T]` -> audio `[B, 1, T·prod(rates)]`.

    `onnx_mode` (constructor flag, or set the attribute later) builds the sine phase per frame (see SineGen);
    4.1 calls this the `OnnxExport()` mode.
    """

    def __init__(self, *, inter_channels: int, upsample_initial_channel: int, upsample_rates: Sequence[int],
                 upsample_kernel_sizes: Sequence[int], resblock: str, resblock_kernel_sizes: Sequence[int],
                 resblock_dilation_sizes: Sequence[Sequence[int]], gin_channels: int, sampling_rate: int = 44100,
                 activation: ActivationFactory | None = None, onnx_mode: bool = False):
        super().__init__()
        self.onnx_mode = onnx_mode
        self.fast_body: Callable[..., torch.Tensor] | None = None
        self.upp = math.prod(upsample_rates)
        self.num_kernels = len(resblock_kernel_sizes)
        self.m_source = SourceModuleHnNSF(sampling_rate, harmonic_num=8)
        self.noise_convs = nn.ModuleList()
        self.conv_pre = weight_norm(nn.Conv1d(inter_channels, upsample_initial_channel, 7, padding=3))
        self.ups = nn.ModuleList()
        widths = [upsample_initial_channel // 2 ** i for i in range(len(upsample_rates) + 1)]
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            self.ups.append(weight_norm(nn.ConvTranspose1d(widths[i], widths[i + 1], kernel, rate,
                                                           padding=(kernel - rate + 1) // 2)))
            self.noise_convs.append(self._noise_conv(widths[i + 1], math.prod(upsample_rates[i + 1:]),
                                                     last=i + 1 == len(upsample_rates)))
        block = ResBlock1 if resblock == "1" else ResBlock2
        self.resblocks = nn.ModuleList(
            block(width, kernel, dilation, activation)
            for width in widths[1:] for kernel, dilation in zip(resblock_kernel_sizes, resblock_dilation_sizes))
        self.conv_post = weight_norm(nn.Conv1d(widths[-1], 1, 7, padding=3))
        self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)
        if activation is not None:
            self.snakes = nn.ModuleList(activation(width) for width in widths[:-1])
            self.snake_post = activation(widths[-1])

    @staticmethod
    def _noise_conv(channels: int, stride: int, last: bool) -> nn.Conv1d:
        """Brings the sample-rate excitation down to the stage's rate (stride = remaining upsampling)."""
        if last:
            return nn.Conv1d(1, channels, kernel_size=1)
        return nn.Conv1d(1, channels, kernel_size=2 * stride, stride=stride, padding=(stride + 1) // 2)

    def forward(self, x: torch.Tensor, f0: torch.Tensor, g: torch.Tensor | None = None,
                generator: torch.Generator | None = None, frames: tuple[int, int] | None = None) -> torch.Tensor:
        """x `[B, inter, T]`, f0 `[B, T]` Hz, g `[B, gin, 1 or T]` -> audio `[B, 1, T·upp]` in [-1, 1].

        `frames` = (start, stop): only the samples of those frames are wanted; the body then runs on them plus
        `context_frames()` on each side (same samples, up to float rounding) and the rest of the output is 0.
        The source still runs on every frame, so the random draws are those of a whole decode."""
        excitation, _, _ = self.m_source(f0, self.upp, self.onnx_mode, generator)
        excitation = excitation.transpose(1, 2).to(self.conv_pre.weight.dtype)  # [B, 1, N]; f0 may be float32
        if frames is None:
            return self._run_body(x, excitation, g)
        start, stop = frames
        context = self.context_frames()
        low, high = max(start - context, 0), min(stop + context, x.shape[2])
        if g is not None and g.shape[2] > 1:
            g = g[:, :, low:high]
        window = self._run_body(x[:, :, low:high], excitation[:, :, low * self.upp:high * self.upp], g)
        audio = window.new_zeros(x.shape[0], 1, x.shape[2] * self.upp)
        keep = slice((start - low) * self.upp, (stop - low) * self.upp)
        audio[:, :, start * self.upp:stop * self.upp] = window[:, :, keep]
        return audio

    def _run_body(self, x: torch.Tensor, excitation: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        if self.fast_body is not None and not torch.is_grad_enabled():
            return self.fast_body(x, excitation, g)
        return self.body(x, excitation, g)

    def context_frames(self) -> int:
        """How many input frames on either side an output frame depends on: the body's receptive radius,
        walked back from the output through every layer and rounded up (19 frames, 0.22 s, for 4.1's 44.1 kHz
        decoder; pointwise activations add nothing, the anti-aliased snakes their filters)."""
        rates = [up.stride[0] for up in self.ups]
        samples_per_frame = self.upp  # at the stage being walked, from the output back to the input
        frames = (_reach(self.conv_post) + _reach(getattr(self, "snake_post", None))) / samples_per_frame
        for i in reversed(range(len(self.ups))):
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            frames += max(_reach(block) for block in blocks) / samples_per_frame
            frames += _reach(self.noise_convs[i]) / self.upp  # reads the excitation, at the output rate
            samples_per_frame //= rates[i]
            up = self.ups[i]
            snake = self.snakes[i] if hasattr(self, "snakes") else None
            frames += (math.ceil(up.kernel_size[0] / up.stride[0]) + _reach(snake)) / samples_per_frame
        frames += _reach(self.conv_pre)
        return math.ceil(frames) + 1

    def body(self, x: torch.Tensor, excitation: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Everything after the source: x `[B, inter, T]`, excitation `[B, 1, T·upp]`, g `[B, gin, 1 or T]`
        -> audio `[B, 1, T·upp]`. `fast_body` (e.g. an ONNX Runtime session of this, see vdecoder.ort_body)
        replaces it at inference when set."""
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        inplace = not torch.is_grad_enabled()  # saves a temporary per elementwise op at inference
        for i, (up, noise_conv) in enumerate(zip(self.ups, self.noise_convs)):
            x = self.snakes[i](x) if hasattr(self, "snakes") else F.leaky_relu(x, LRELU_SLOPE, inplace=inplace)
            x = up(x).add_(noise_conv(excitation)) if inplace else up(x) + noise_conv(excitation)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = _mean_of(blocks, x, inplace)
        x = self.snake_post(x) if hasattr(self, "snake_post") else F.leaky_relu(x, inplace=inplace)  # 4.1: slope 0.01
        return torch.tanh(self.conv_post(x))

    def remove_weight_norm(self) -> None:
        for module in [self.conv_pre, *self.ups, self.conv_post]:
            remove_weight_norm(module)
        for block in self.resblocks:
            block.remove_weight_norm()


def _reach(module: nn.Module | None) -> float:
    """Samples on either side that a chain of layers reads: each conv's half span, half of each FIR filter
    (the snakes' resamplers, which filter at twice the rate: generous), pointwise layers nothing."""
    if module is None:
        return 0.0
    reach = 0.0
    for layer in module.modules():
        if isinstance(layer, nn.Conv1d):
            reach += layer.dilation[0] * (layer.kernel_size[0] - 1) / 2
        elif isinstance(getattr(layer, "filter", None), torch.Tensor):
            reach += layer.filter.shape[-1] / 2
    return reach


def _mean_of(blocks: Sequence[nn.Module], x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """(blocks[0](x) + blocks[1](x) + ...) / len(blocks), summed left to right; in place when allowed
    (the same float operations in the same order, without a temporary per addition)."""
    total = blocks[0](x)
    for block in blocks[1:]:
        total = total.add_(block(x)) if inplace else total + block(x)
    return total.div_(len(blocks)) if inplace else total / len(blocks)
