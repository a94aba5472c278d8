"""MultiPeriodDiscriminator: 4.1's state-dict layout, and the 1-D period convs equal 4.1's 2-D ones."""
from __future__ import annotations

import json

import pytest
import torch

from modules import losses
from modules.discriminator import PERIODS, DiscriminatorP, MultiPeriodDiscriminator, period_forward_2d
from tests.conftest import SPEC


@pytest.fixture(scope="module")
def mpd() -> MultiPeriodDiscriminator:
    torch.manual_seed(0)
    return MultiPeriodDiscriminator()


@pytest.mark.shared
def test_state_dict_matches_41(mpd):
    reference = json.loads((SPEC / "state_dicts" / "state_dict_D.json").read_text())["state_dict"]
    ours = mpd.state_dict()
    assert list(ours) == list(reference)
    assert {k: list(v.shape) for k, v in ours.items()} == reference
    assert len(ours) == 111
    assert sum(v.numel() for v in ours.values()) == 46_747_132


@pytest.mark.parametrize("index", [1, 3])
def test_period_discriminator_equals_2d_form(mpd, index):
    disc = mpd.discriminators[index]
    audio = torch.randn(2, 1, 1027)  # not a multiple of the period: exercises the reflect padding
    with torch.no_grad():
        logits, fmaps = disc(audio)
        ref_logits, ref_fmaps = period_forward_2d(disc, audio)
    # same convolutions in another layout: float32 summation-order noise only
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for ours, ref in zip(fmaps, ref_fmaps):
        torch.testing.assert_close(ours, ref.permute(0, 3, 1, 2).reshape(ours.shape), rtol=1e-4, atol=1e-5)


def test_forward_outputs_and_batched_equals_separate(mpd):
    real, fake = torch.randn(1, 1, 1500), torch.randn(1, 1, 1500)
    with torch.no_grad():
        real_logits, fake_logits, real_fmaps, fake_fmaps = mpd(real, fake)
        alone_logits, alone_fmaps = mpd.score(fake)
    assert len(real_logits) == len(fake_logits) == 1 + len(PERIODS)
    assert all(len(f) == 6 for f in real_fmaps[1:]) and len(real_fmaps[0]) == 7
    for ours, alone in zip(fake_logits, alone_logits):
        torch.testing.assert_close(ours, alone, rtol=1e-4, atol=1e-5)
    for ours, alone in zip(fake_fmaps, alone_fmaps):
        for a, b in zip(ours, alone):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    loss, real_terms, fake_terms = losses.discriminator_loss(real_logits, fake_logits)
    expected = sum(((1 - r) ** 2).mean() + (f ** 2).mean() for r, f in zip(real_logits, fake_logits))
    torch.testing.assert_close(loss, expected)
    assert float(losses.feature_loss(real_fmaps, real_fmaps)) == 0.0


def test_losses_values():
    z_p = torch.zeros(1, 2, 3)
    m_p, logs_p, logs_q = torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.full((1, 2, 3), -1.0)
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    # per element 0 - (-1) - 0.5 + 0 = 0.5; sum over 2 channels x 2 valid frames = 2, over mask sum 2 -> 1
    assert float(losses.kl_loss(z_p, logs_q, m_p, logs_p, mask)) == pytest.approx(1.0)
    gen, terms = losses.generator_loss([torch.zeros(1, 4), torch.ones(1, 4)])
    assert float(gen) == pytest.approx(1.0) and len(terms) == 2
    assert float(losses.f0_loss(torch.zeros(1, 1, 4), torch.ones(1, 1, 4))) == pytest.approx(1.0)


def test_remove_weight_norm_keeps_output():
    disc = DiscriminatorP(3)
    audio = torch.randn(1, 1, 700)
    with torch.no_grad():
        before, _ = disc(audio)
        disc.remove_weight_norm()
        after, _ = disc(audio)
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)
    assert not any("weight_g" in k for k in disc.state_dict())
