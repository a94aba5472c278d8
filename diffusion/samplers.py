"""Reverse-diffusion samplers on the discrete linear-β schedule of GaussianDiffusion.

Every sampler takes a noise predictor `denoise(x [B, M, T], t [B]) -> eps [B, M, T]`, where t is the
step index (fractional between grid points), and a start `x` at step `k_step - 1`, i.e.
x = sqrt(ᾱ[k_step-1])·x0 + sqrt(1-ᾱ[k_step-1])·ε. They return the estimate of x0 [B, M, T].

Algorithms, written from the papers:
- DDPM ancestral sampling (Ho et al. 2020), x0 clamped to [-1, 1], every step.
- DDIM, η = 0 (Song et al. 2021), on a stride-`speedup` grid ending at the clean sample.
- PNDM's pseudo linear multistep (PLMS, Liu et al. 2022): a pseudo improved-Euler first step, then
  Adams–Bashforth combinations of up to four noise predictions, each applied with the DDIM transfer.
- DPM-Solver / DPM-Solver++ (Lu et al. 2022), multistep order 2, noise- or data-prediction form,
  steps uniform in time over the discrete VP schedule built from betas[:k_step].
- UniPC, B(h) = e^h - 1 ("bh2"), order 2 multistep, data prediction, with the UniC corrector on every
  step but the last (Zhao et al. 2023).

Rectified-flow models (objective `rectified_flow`, diffusion/flow.py) predict a velocity instead of a noise:
`velocity(x [B, M, T], t [B]) -> v [B, M, T]` with t in [0, 1] (0: noise, 1: mel). Their samplers integrate
dx/dt = v from a start time t0 to 1 in `steps` equal steps:
- Euler: one velocity per step.
- RK4: the classical fourth-order Runge-Kutta step, four velocities per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DDPM = "ddpm"
RECTIFIED_FLOW = "rectified_flow"
OBJECTIVES = (DDPM, RECTIFIED_FLOW)


@dataclass(frozen=True)
class SamplerRecord:
    """One sampler: the training objective whose model it can run, and what it does."""
    objective: str
    summary: str


SAMPLERS: dict[str, SamplerRecord] = {
    "ddim": SamplerRecord(DDPM, "DDIM, eta 0, stride `speedup`"),
    "pndm": SamplerRecord(DDPM, "PLMS linear multistep, stride `speedup`"),
    "dpm-solver": SamplerRecord(DDPM, "DPM-Solver order 2, k_step // speedup steps"),
    "dpm-solver++": SamplerRecord(DDPM, "DPM-Solver++ order 2, k_step // speedup steps"),
    "unipc": SamplerRecord(DDPM, "UniPC-bh2 order 2, k_step // speedup steps"),
    "euler": SamplerRecord(RECTIFIED_FLOW, "Euler steps along the predicted velocity, one model call each"),
    "rk4": SamplerRecord(RECTIFIED_FLOW, "classical Runge-Kutta steps, four model calls each"),
}
METHODS = tuple(name for name, record in SAMPLERS.items() if record.objective == DDPM)
FLOW_METHODS = tuple(name for name, record in SAMPLERS.items() if record.objective == RECTIFIED_FLOW)
DEFAULT_METHOD = {DDPM: "dpm-solver++", RECTIFIED_FLOW: "euler"}


def methods_for(objective: str) -> tuple[str, ...]:
    return METHODS if objective == DDPM else FLOW_METHODS


def method_for(objective: str, configured: str | None) -> str | None:
    """The sampler to run a model of `objective` with: `configured` when it fits (None is DDPM's ancestral
    sampling), the objective's default when `configured` is a sampler of the other objective, so a config's
    `infer.method` never blocks a model of the other kind. Unknown names are kept, for the model to refuse."""
    if configured is None:
        return None if objective == DDPM else DEFAULT_METHOD[objective]
    record = SAMPLERS.get(configured)
    return configured if record is None or record.objective == objective else DEFAULT_METHOD[objective]


def _steps(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


def _alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - betas)


def ddpm(denoise: Denoiser, x: torch.Tensor, betas: np.ndarray, k_step: int,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestral sampling through every step k_step-1 ... 0, using the posterior q(x_{t-1} | x_t, x0)."""
    ac = _alphas_cumprod(betas)
    ac_prev = np.append(1.0, ac[:-1])
    for i in reversed(range(k_step)):
        eps = denoise(x, _steps(x, i))
        x0 = (x - math.sqrt(1.0 - ac[i]) * eps) / math.sqrt(ac[i])
        x0 = x0.clamp(-1.0, 1.0)
        coef_x0 = betas[i] * math.sqrt(ac_prev[i]) / (1.0 - ac[i])
        coef_xt = (1.0 - ac_prev[i]) * math.sqrt(1.0 - betas[i]) / (1.0 - ac[i])
        x = coef_x0 * x0 + coef_xt * x
        if i > 0:
            std = math.sqrt(betas[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i]))
            x = x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


def _strided_grid(k_step: int, speedup: int) -> list[tuple[int, int]]:
    """(t, t_prev) pairs from k_step-1 down by `speedup`; t_prev < 0 stands for the clean sample (ᾱ = 1)."""
    return [(t, t - speedup) for t in range(k_step - 1, -1, -speedup)]


def _transfer(x: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """Deterministic DDIM move of x from ᾱ = a_t to ᾱ = a_prev along the predicted noise."""
    x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps


def ddim(denoise: Denoiser, x: torch.Tensor, betas: np.ndarray, k_step: int, speedup: int) -> torch.Tensor:
    ac = _alphas_cumprod(betas)
    for t, t_prev in _strided_grid(k_step, speedup):
        a_prev = ac[t_prev] if t_prev >= 0 else 1.0
        x = _transfer(x, denoise(x, _steps(x, t)), ac[t], a_prev)
    return x


def plms(denoise: Denoiser, x: torch.Tensor, betas: np.ndarray, k_step: int, speedup: int) -> torch.Tensor:
    """PNDM sampling: linear multistep over noise predictions, history restarted for every call."""
    ac = _alphas_cumprod(betas)
    history: list[torch.Tensor] = []
    for t, t_prev in _strided_grid(k_step, speedup):
        a_prev = ac[t_prev] if t_prev >= 0 else 1.0
        eps = denoise(x, _steps(x, t))
        if not history and t_prev >= 0:
            x_end = _transfer(x, eps, ac[t], a_prev)
            eps_used = 0.5 * (eps + denoise(x_end, _steps(x, t_prev)))
        elif len(history) <= 1:
            eps_used = eps if not history else (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            eps_used = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            eps_used = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [eps])[-3:]
        x = _transfer(x, eps_used, ac[t], a_prev)
    return x


class DiscreteVP:
    """The discrete schedule betas[:N] seen as a continuous VP process on t in [1/N, 1].

    log α(t) is piecewise linear between the grid points t_i = (i+1)/N, where α(t_i)² = ᾱ[i];
    the network is fed the step index t·N - 1.
    """

    def __init__(self, betas: np.ndarray):
        self.n = len(betas)
        self.grid = np.arange(1, self.n + 1, dtype=np.float64) / self.n
        self.log_alphas = 0.5 * np.cumsum(np.log1p(-betas.astype(np.float64)))

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self.grid, self.log_alphas))

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        """Half log-SNR λ(t) = log α - log σ."""
        return self.log_alpha(t) - math.log(self.sigma(t))

    def model_time(self, t: float) -> float:
        return t * self.n - 1.0

    def time_uniform(self, steps: int) -> np.ndarray:
        return np.linspace(1.0, 1.0 / self.n, steps + 1)


def _model_output(denoise: Denoiser, vp: DiscreteVP, x: torch.Tensor, t: float, data: bool) -> torch.Tensor:
    """Noise prediction, or the x0 it implies when `data` (data-prediction form)."""
    eps = denoise(x, _steps(x, vp.model_time(t)))
    return (x - vp.sigma(t) * eps) / vp.alpha(t) if data else eps


def _dpm_update(x: torch.Tensor, outs: list[torch.Tensor], times: list[float], t: float, order: int,
                vp: DiscreteVP, data: bool) -> torch.Tensor:
    """One multistep DPM-Solver(++) step from times[-1] to t, of order 1 or 2."""
    s0 = times[-1]
    h = vp.lam(t) - vp.lam(s0)
    m0 = outs[-1]
    d1 = torch.zeros_like(m0)
    if order == 2:
        r0 = (vp.lam(s0) - vp.lam(times[-2])) / h
        d1 = (m0 - outs[-2]) / r0
    if data:
        phi = math.expm1(-h)
        return vp.sigma(t) / vp.sigma(s0) * x - vp.alpha(t) * phi * (m0 + 0.5 * d1)
    phi = math.expm1(h)
    return vp.alpha(t) / vp.alpha(s0) * x - vp.sigma(t) * phi * (m0 + 0.5 * d1)


def dpm_solver(denoise: Denoiser, x: torch.Tensor, betas: np.ndarray, k_step: int, speedup: int,
               data_prediction: bool) -> torch.Tensor:
    """Multistep DPM-Solver of order 2 with k_step // speedup time-uniform steps (one model call each)."""
    vp = DiscreteVP(betas[:k_step])
    steps = max(1, k_step // speedup)
    ts = vp.time_uniform(steps)
    outs = [_model_output(denoise, vp, x, ts[0], data_prediction)]
    times = [float(ts[0])]
    for i in range(1, steps + 1):
        order = 1 if i == 1 else 2
        if steps < 10:
            order = min(order, steps + 1 - i)
        x = _dpm_update(x, outs, times, float(ts[i]), order, vp, data_prediction)
        if i < steps:
            outs = (outs + [_model_output(denoise, vp, x, ts[i], data_prediction)])[-2:]
            times = (times + [float(ts[i])])[-2:]
    return x


def _unipc_update(denoise: Denoiser, vp: DiscreteVP, x: torch.Tensor, outs: list[torch.Tensor],
                  times: list[float], t: float, order: int, correct: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """UniP predictor (order 1 or 2) then, if `correct`, the UniC corrector; returns (x_t, x0 prediction at t)."""
    s0, m0 = times[-1], outs[-1]
    h = vp.lam(t) - vp.lam(s0)
    hh = -h
    b_h = math.expm1(hh)  # bh2: B(h) = e^h - 1 in the data-prediction sign convention
    x_lin = vp.sigma(t) / vp.sigma(s0) * x - vp.alpha(t) * math.expm1(hh) * m0
    g1 = math.expm1(hh) / hh - 1.0
    b1 = g1 / b_h
    b2 = (g1 / hh - 0.5) * 2.0 / b_h
    x_t = x_lin
    if order == 2:
        r1 = (vp.lam(times[-2]) - vp.lam(s0)) / h
        d1 = (outs[-2] - m0) / r1
        x_t = x_lin - vp.alpha(t) * b_h * 0.5 * d1
    if not correct:
        return x_t, None
    m_t = _model_output(denoise, vp, x_t, t, data=True)
    dt = m_t - m0
    if order == 1:
        return x_lin - vp.alpha(t) * b_h * 0.5 * dt, m_t
    rho1 = (b1 - b2) / (1.0 - r1)
    rho_t = b1 - rho1
    return x_lin - vp.alpha(t) * b_h * (rho1 * d1 + rho_t * dt), m_t


def unipc(denoise: Denoiser, x: torch.Tensor, betas: np.ndarray, k_step: int, speedup: int) -> torch.Tensor:
    """UniPC-bh2 order 2 multistep, k_step // speedup time-uniform steps, lower order on the last step."""
    vp = DiscreteVP(betas[:k_step])
    steps = max(1, k_step // speedup)
    ts = vp.time_uniform(steps)
    outs = [_model_output(denoise, vp, x, ts[0], data=True)]
    times = [float(ts[0])]
    for i in range(1, steps + 1):
        order = 1 if i == 1 else min(2, steps + 1 - i)
        x, m_t = _unipc_update(denoise, vp, x, outs, times, float(ts[i]), order, correct=i < steps)
        if i < steps:
            outs = (outs + [m_t])[-2:]
            times = (times + [float(ts[i])])[-2:]
    return x


def sample(method: str | None, denoise: Denoiser, x: torch.Tensor, betas: np.ndarray, k_step: int,
           speedup: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Run `method` (one of METHODS) from x at step k_step-1; DDPM when method is None or speedup <= 1."""
    betas = np.asarray(betas, dtype=np.float64)
    if method is None or speedup <= 1:
        return ddpm(denoise, x, betas, k_step, generator)
    if method == "ddim":
        return ddim(denoise, x, betas, k_step, speedup)
    if method == "pndm":
        return plms(denoise, x, betas, k_step, speedup)
    if method in ("dpm-solver", "dpm-solver++"):
        return dpm_solver(denoise, x, betas, k_step, speedup, data_prediction=method == "dpm-solver++")
    if method == "unipc":
        return unipc(denoise, x, betas, k_step, speedup)
    raise ValueError(f"unknown diffusion sampler '{method}'")


def _flow_times(t0: float, steps: int) -> np.ndarray:
    return np.linspace(float(t0), 1.0, int(steps) + 1)


def euler(velocity: Velocity, x: torch.Tensor, t0: float, steps: int) -> torch.Tensor:
    """x at time t0 -> x at time 1 in `steps` Euler steps."""
    times = _flow_times(t0, steps)
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * velocity(x, _steps(x, t))
    return x


def rk4(velocity: Velocity, x: torch.Tensor, t0: float, steps: int) -> torch.Tensor:
    """x at time t0 -> x at time 1 in `steps` classical Runge-Kutta steps."""
    times = _flow_times(t0, steps)
    for t, t_next in zip(times[:-1], times[1:]):
        h = t_next - t
        k1 = velocity(x, _steps(x, t))
        k2 = velocity(x + 0.5 * h * k1, _steps(x, t + 0.5 * h))
        k3 = velocity(x + 0.5 * h * k2, _steps(x, t + 0.5 * h))
        k4 = velocity(x + h * k3, _steps(x, t_next))
        x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def integrate_flow(method: str, velocity: Velocity, x: torch.Tensor, t0: float, steps: int) -> torch.Tensor:
    """Run the flow sampler `method` (one of FLOW_METHODS) from x at time t0 to time 1."""
    if steps < 1:
        raise ValueError(f"a flow sampler needs at least one step, got {steps}")
    if method == "euler":
        return euler(velocity, x, t0, steps)
    if method == "rk4":
        return rk4(velocity, x, t0, steps)
    raise ValueError(f"unknown flow sampler '{method}'")
