"""The NSF harmonic source for the ONNX graph, built from frame-rate f0, and its sample-rate reference.

`FrameRateSource` replaces the decoder's `m_source` in the export copy of the model. It keeps the trained
merge layer (`l_linear`, Linear(9 -> 1) + tanh) and computes the sines with ops every ONNX Runtime
provider runs, DirectML included (MoeVS gotcha §C7.1): no Resize/Upsample to the sample rate, no float64,
cumulative sums only over frames, and — unless asked for — no random ops.

Phase, per harmonic k (1..9), in cycles: increment per sample inc = (k·f0 / sr) mod 1, constant over a
frame; a frame advances the phase by adv = (upp·inc) mod 1; frame t starts at Σ_{t'<t} adv_t' and its
sample j (0-based) sits at start + (j+1)·inc — the running sum 4.1 forms sample by sample. The frame sum is
taken twice in float32: once roughly, only to find where it crosses whole numbers, and once over
adv minus those integer steps, which stays within about [0, 1] and so keeps float32 precision however long
the input. A misplaced integer step changes the phase by a whole cycle, which sin() does not see.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

HARMONICS = 9  # fundamental + 8 overtones, as 4.1's SourceModuleHnNSF(harmonic_num=8)
SINE_AMP = 0.1
NOISE_STD = 0.003


class FrameRateSource(nn.Module):
    """Drop-in for the decoder's `m_source`: (f0 `[B, T]`, upp, ...) -> (excitation `[B, T·upp, 1]`, None, None).

    `random=False` (default): start phases 0 and no additive noise, so the graph is deterministic.
    `random=True`: 4.1's random start phases (0 for the fundamental) and Gaussian noise (0.003 where voiced,
    0.1/3 where unvoiced), drawn by the graph's RandomUniformLike / RandomNormalLike ops.
    """

    def __init__(self, l_linear: nn.Linear, sampling_rate: int, random: bool = False):
        super().__init__()
        self.l_linear = l_linear
        self.sampling_rate = sampling_rate
        self.random = random
        self.register_buffer("harmonics", torch.arange(1, HARMONICS + 1, dtype=torch.float32), persistent=False)
        first_zero = torch.ones(HARMONICS)
        first_zero[0] = 0
        self.register_buffer("phase_mask", first_zero, persistent=False)

    def forward(self, f0: torch.Tensor, upp: int, onnx_mode: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, None, None]:
        batch, frames = f0.shape
        inc = (f0.unsqueeze(-1) * self.harmonics / self.sampling_rate) % 1  # [B, T, 9] cycles per sample
        start = frame_start_phase(inc, upp)  # [B, T, 9]
        if self.random:
            start = start + torch.rand_like(inc[:, :1]) * self.phase_mask  # [B, 1, 9] start phase per harmonic
        ramp = torch.arange(1, upp + 1, dtype=f0.dtype, device=f0.device).view(1, 1, upp, 1)
        phase = start.unsqueeze(2) + (inc.unsqueeze(2) * ramp) % 1  # [B, T, upp, 9]
        voiced = (f0 > 0).to(f0.dtype).view(batch, frames, 1, 1)
        sines = torch.sin(phase * (2 * math.pi)) * SINE_AMP * voiced
        if self.random:
            noise_amp = voiced * NOISE_STD + (1 - voiced) * (SINE_AMP / 3)
            sines = sines + noise_amp * torch.randn_like(sines)
        sines = sines.reshape(batch, -1, HARMONICS)  # [B, T·upp, 9]
        return torch.tanh(self.l_linear(sines)), None, None


def frame_start_phase(inc: torch.Tensor, upp: int) -> torch.Tensor:
    """Phase (cycles, ≈[0, 1]) at the start of each frame: exclusive running sum of (upp·inc) mod 1.

    inc `[B, T, K]` -> `[B, T, K]`; float32 throughout (see module doc for why it stays precise).
    """
    adv = (inc * upp) % 1  # [B, T, K]
    wraps = torch.floor(torch.cumsum(adv, dim=1))  # rough whole cycles done after each frame
    before = torch.cat([torch.zeros_like(wraps[:, :1]), wraps[:, :-1]], dim=1)
    step = adv - (wraps - before)  # adv minus the integer crossed in this frame
    return torch.cumsum(step, dim=1) - step


@dataclass(frozen=True)
class SourceDraws:
    """The random numbers a `random=True` graph drew: start phases `[B, 1, 9]` (raw uniform) and noise
    `[B, N, 9]` (raw standard normal), so the torch reference can use the same ones."""

    phases: torch.Tensor
    noise: torch.Tensor


def reference_sines(f0: torch.Tensor, upp: int, sampling_rate: int, draws: SourceDraws | None = None) -> torch.Tensor:
    """4.1's sample-rate sine source, phases summed in float64: f0 `[B, T]` -> sines+noise `[B, T·upp, 9]`.

    Increments are formed in float32 exactly as 4.1 forms them ((f0·k / sr) mod 1 per sample); `draws`
    None means zero start phases and no noise (the deterministic graph).
    """
    batch, frames = f0.shape
    harmonics = torch.arange(1, HARMONICS + 1, dtype=torch.float32)
    f0_samples = f0.float().repeat_interleave(upp, dim=1).unsqueeze(-1)  # [B, N, 1]
    inc = ((f0_samples * harmonics) / sampling_rate) % 1  # [B, N, 9] float32
    phase = torch.cumsum(inc.double(), dim=1)
    if draws is not None:
        mask = torch.ones(HARMONICS, dtype=torch.float64)
        mask[0] = 0
        phase = phase + (draws.phases.double().reshape(batch, 1, HARMONICS) * mask)
    voiced = (f0_samples > 0).double()
    sines = torch.sin(2 * math.pi * phase) * SINE_AMP * voiced
    if draws is not None:
        sines = sines + (voiced * NOISE_STD + (1 - voiced) * SINE_AMP / 3) * draws.noise.double().reshape(sines.shape)
    return sines.float()
