"""RectifiedFlow: the shallow-diffusion stage trained by conditional flow matching instead of DDPM.

The convention, on the normalised mel scale of GaussianDiffusion ([SPEC_MIN, SPEC_MAX] -> [-1, 1]):

    x_t = (1 - t) * noise + t * mel,   t in [0, 1]   (t = 0: pure noise, t = 1: the mel)
    velocity target  dx_t/dt = mel - noise

The WaveNet denoiser is fed the noise level on its DDPM step scale, (1 - t) * timesteps, so a DDPM model's
weights are a sensible start for a flow model. A shallow start at depth k_step means t0 = 1 - k_step / timesteps:
the source mel noised to t0, then integrated to t = 1. A model with k_step_max < timesteps trains only
t >= 1 - k_step_max / timesteps.

The module subclasses GaussianDiffusion so its state dict has 4.1's layout (the DDPM schedule buffers are kept,
unused): the two kinds of checkpoint differ only in the `objective` key train_diff.py adds to flow checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion import samplers
from diffusion.gaussian import GaussianDiffusion


class RectifiedFlow(GaussianDiffusion):
    """Velocity-prediction flow between Gaussian noise and normalised mels."""

    objective = samplers.RECTIFIED_FLOW

    @property
    def t_min(self) -> float:
        """The earliest time a model trained with this k_step_max has seen."""
        return 1.0 - self.k_step_max / self.timesteps

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """Flow time t [B] -> the denoiser's step input (its noise level on the DDPM step scale)."""
        return (1.0 - t) * self.timesteps

    def interpolate(self, x1: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for targets x1 [B, M, T] at times t [B]."""
        t = t[:, None, None].to(x1.dtype)
        return (1.0 - t) * noise + t * x1

    def loss(self, cond: torch.Tensor, gt_spec: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE between the true velocity mel - noise and the predicted one at t ~ U[t_min, 1)."""
        x1 = self.norm_spec(gt_spec).transpose(1, 2)  # [B, M, T]
        u = torch.rand((x1.shape[0],), device=x1.device, generator=generator)
        t = self.t_min + (1.0 - self.t_min) * u
        noise = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
        predicted = self.denoise_fn(self.interpolate(x1, noise, t), self.model_time(t), cond.transpose(1, 2))
        return F.mse_loss(predicted.float(), (x1 - noise).float())

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, gt_spec: torch.Tensor | None, k_step: int, method: str | None,
               speedup: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mel [B, T, M] integrated from noise (gt_spec None) or from gt_spec noised to t0 = 1 - k_step / timesteps.

        `method` is one of samplers.FLOW_METHODS; `speedup` is the number of integration steps here.
        """
        cond = cond.transpose(1, 2)  # [B, H, T]
        shape = (cond.shape[0], self.out_dims, cond.shape[2])
        noise = torch.randn(shape, device=cond.device, dtype=cond.dtype, generator=generator)
        if gt_spec is None:
            t0, x = 0.0, noise
        else:
            t0 = 1.0 - k_step / self.timesteps
            t = torch.full((shape[0],), t0, device=cond.device)
            x = self.interpolate(self.norm_spec(gt_spec).transpose(1, 2), noise, t)
        velocity = lambda xt, t: self.denoise_fn(xt, self.model_time(t), cond)  # noqa: E731
        x = samplers.integrate_flow(method, velocity, x, t0, int(speedup))
        return self.denorm_spec(x.transpose(1, 2))
