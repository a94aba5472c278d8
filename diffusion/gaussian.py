"""GaussianDiffusion: the linear-β DDPM around the WaveNet denoiser (spec §11.3).

Its buffers (betas, alphas_cumprod, ..., spec_min, spec_max) are part of 4.1's state dict, so they are
registered under the same names even where sampling recomputes what it needs from `betas`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion import samplers
from diffusion.wavenet import WaveNet

SPEC_MIN = -12.0
SPEC_MAX = 2.0
BETA_START = 1e-4
BETA_END = 0.02


def _schedule_buffers(timesteps: int) -> dict[str, np.ndarray]:
    """The DDPM quantities 4.1 stores, computed in float64 (saved as float32)."""
    betas = np.linspace(BETA_START, BETA_END, timesteps)
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    }


class GaussianDiffusion(nn.Module):
    """Noise-prediction diffusion over mels normalised from [SPEC_MIN, SPEC_MAX] to [-1, 1]."""

    objective = samplers.DDPM

    def __init__(self, denoise_fn: WaveNet, out_dims: int = 128, timesteps: int = 1000, k_step_max: int = 1000):
        super().__init__()
        self.denoise_fn = denoise_fn
        self.out_dims = out_dims
        self.timesteps = timesteps
        self.k_step_max = k_step_max
        for name, value in _schedule_buffers(timesteps).items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))
        self.register_buffer("spec_min", torch.full((1, 1, 1), SPEC_MIN))
        self.register_buffer("spec_max", torch.full((1, 1, 1), SPEC_MAX))

    def norm_spec(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.spec_min) / (self.spec_max - self.spec_min) * 2.0 - 1.0

    def denorm_spec(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) / 2.0 * (self.spec_max - self.spec_min) + self.spec_min

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise x0 [B, M, T] to steps t [B] (long)."""
        return (self.sqrt_alphas_cumprod[t][:, None, None] * x0
                + self.sqrt_one_minus_alphas_cumprod[t][:, None, None] * noise)

    def loss(self, cond: torch.Tensor, gt_spec: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE between true and predicted noise at t ~ U{0..k_step_max-1}; cond [B, T, H], gt_spec [B, T, M]."""
        x0 = self.norm_spec(gt_spec).transpose(1, 2)  # [B, M, T]
        t = torch.randint(0, self.k_step_max, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        predicted = self.denoise_fn(self.q_sample(x0, t, noise), t, cond.transpose(1, 2))
        return F.mse_loss(predicted.float(), noise.float())

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, gt_spec: torch.Tensor | None, k_step: int, method: str | None,
               speedup: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mel [B, T, M] from pure noise (gt_spec None: k_step must be `timesteps`) or from gt_spec noised to k_step-1."""
        cond = cond.transpose(1, 2)  # [B, H, T]
        shape = (cond.shape[0], self.out_dims, cond.shape[2])
        noise = torch.randn(shape, device=cond.device, dtype=cond.dtype, generator=generator)
        if gt_spec is None:
            x = noise
        else:
            x0 = self.norm_spec(gt_spec).transpose(1, 2)
            t = torch.full((shape[0],), k_step - 1, device=cond.device, dtype=torch.long)
            x = self.q_sample(x0, t, noise)
        betas = self.betas.detach().double().cpu().numpy()
        x = samplers.sample(method, lambda xt, t: self.denoise_fn(xt, t, cond), x, betas, k_step, speedup, generator)
        return self.denorm_spec(x.transpose(1, 2))
