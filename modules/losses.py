"""So-VITS training losses (spec §10.3). Every function works in float32 whatever dtype its inputs have,
as 4.1 computes the losses outside autocast."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, list[float], list[float]]:
    """LSGAN discriminator loss: Σ over sub-discriminators of mean((1 − D(y))²) + mean(D(ŷ)²).

    Returns the total and the per-discriminator real and fake terms (detached, for logging).
    """
    total = 0.0
    real_terms, fake_terms = [], []
    for real, fake in zip(real_logits, fake_logits):
        real_loss = torch.mean((1 - real.float()) ** 2)
        fake_loss = torch.mean(fake.float() ** 2)
        total = total + real_loss + fake_loss
        real_terms.append(real_loss.detach())
        fake_terms.append(fake_loss.detach())
    return total, real_terms, fake_terms


def generator_loss(fake_logits: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN generator loss: Σ mean((1 − D(ŷ))²); returns the total and the per-discriminator terms."""
    terms = [torch.mean((1 - fake.float()) ** 2) for fake in fake_logits]
    return sum(terms), [t.detach() for t in terms]


def feature_loss(real_fmaps: list[list[torch.Tensor]], fake_fmaps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Feature matching: 2 · Σ over every feature map of mean |f_real − f_fake| (real maps are targets)."""
    total = 0.0
    for real_maps, fake_maps in zip(real_fmaps, fake_fmaps):
        for real, fake in zip(real_maps, fake_maps):
            total = total + torch.mean(torch.abs(real.float().detach() - fake.float()))
    return total * 2


def kl_loss(z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor,
            z_mask: torch.Tensor) -> torch.Tensor:
    """KL between the posterior sample mapped through the flow and the prior, averaged over valid frames.

    z_p, logs_q, m_p, logs_p `[B, C, T]`; z_mask `[B, 1, T]`.
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


def mel_loss(mel_real: torch.Tensor, mel_fake: torch.Tensor) -> torch.Tensor:
    """L1 between log-mels `[B, n_mels, T]` (weighted by c_mel by the caller)."""
    return F.l1_loss(mel_real.float(), mel_fake.float())


def f0_loss(pred_lf0: torch.Tensor, lf0: torch.Tensor) -> torch.Tensor:
    """MSE between the F0 decoder's log-f0 and the true log-f0 `[B, 1, T]`."""
    return F.mse_loss(pred_lf0.float(), lf0.float())
