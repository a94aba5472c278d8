"""Shallow-diffusion model and samplers: state-dict layout, sampler accuracy, inference contract, refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffusion import METHODS, Unit2Mel, Unit2MelDims, load_model, samplers
from core.checkpoint import save_diffusion_checkpoint as save_checkpoint
from core.config import load_template, save_config
from core.errors import SvcError
from tests.conftest import SPEC

TINY = dict(input_channel=8, n_layers=2, n_chans=16, n_hidden=16, timesteps=100)
BETAS = np.linspace(1e-4, 0.02, 1000)


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one torch thread


def tiny_model(seed: int = 0, **overrides) -> Unit2Mel:
    """A tiny Unit2Mel whose zero-initialised output layer is randomised, so its output depends on the input."""
    torch.manual_seed(seed)
    model = Unit2Mel(Unit2MelDims(**{**TINY, **overrides}))
    torch.nn.init.normal_(model.decoder.denoise_fn.output_projection.weight, std=0.1)
    return model.eval()


def inputs(batch: int = 2, frames: int = 12, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    units = torch.randn(batch, frames, 8, generator=g)
    f0 = 200 + 100 * torch.rand(batch, frames, 1, generator=g)
    volume = 0.1 * torch.rand(batch, frames, 1, generator=g)
    mel = -6 + 2 * torch.randn(batch, frames, 128, generator=g)
    return units, f0, volume, mel


@pytest.mark.shared
@pytest.mark.parametrize("name,n_spk", [("state_dict_diffusion_nspk1", 1), ("state_dict_diffusion", 2)])
def test_state_dict_matches_41_layout(name, n_spk):
    reference = json.loads((SPEC / "state_dicts" / f"{name}.json").read_text())
    model = Unit2Mel(Unit2MelDims(n_spk=n_spk))  # 4.1's defaults: 768-d units, 20 x 512 WaveNet, 1000 steps
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(reference["state_dict"])
    assert shapes == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["meta"]["n_parameters"]


def test_schedule_buffers():
    decoder = Unit2Mel(Unit2MelDims(**TINY)).decoder
    betas = np.linspace(1e-4, 0.02, 100)
    ac = np.cumprod(1 - betas)
    np.testing.assert_allclose(decoder.betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(decoder.alphas_cumprod.numpy(), ac, rtol=1e-6)
    np.testing.assert_allclose(decoder.posterior_mean_coef2.numpy()[1:],
                               ((1 - ac[:-1]) * np.sqrt(1 - betas[1:]) / (1 - ac[1:])), rtol=1e-5)
    assert decoder.spec_min.item() == -12 and decoder.spec_max.item() == 2
    mel = torch.tensor([[[-12.0, 2.0, -5.0]]])
    assert torch.allclose(decoder.norm_spec(mel), torch.tensor([[[-1.0, 1.0, 0.0]]]))
    assert torch.allclose(decoder.denorm_spec(decoder.norm_spec(mel)), mel)


def gaussian_oracle(mu: float, s: float, betas: np.ndarray):
    """The exact noise predictor for data ~ N(mu, s²) elementwise (log ᾱ interpolated between steps)."""
    log_ac = np.log(np.cumprod(1 - betas))

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = torch.tensor(np.exp(np.interp(t.double().numpy(), np.arange(len(betas)), log_ac)), dtype=x.dtype)
        a = a[:, None, None]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s * s + 1 - a)
    return denoise


def start_and_flow_target(k_step: int, mu: float, s: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x at step k_step-1 and where the probability-flow ODE maps it at t = 0 (exact for Gaussian data)."""
    z = torch.randn(4, 8, 40, generator=torch.Generator().manual_seed(seed))
    a = np.cumprod(1 - BETAS)[k_step - 1]
    return math.sqrt(a) * mu + math.sqrt(a * s * s + 1 - a) * z, mu + s * z


# Errors at 4.1's defaults (k_step 100, speedup 10) against the exact flow, with generous margins over what the
# implementations reach (ddim 0.03, pndm 0.002, dpm-solver 0.01, dpm-solver++ 0.02, unipc 0.0005).
TOLERANCE = {"ddim": 0.06, "pndm": 0.006, "dpm-solver": 0.03, "dpm-solver++": 0.05, "unipc": 0.003}


@pytest.mark.parametrize("method", METHODS)
def test_sampler_follows_exact_probability_flow(method):
    mu, s = 0.3, 0.5
    x, target = start_and_flow_target(100, mu, s)
    out = samplers.sample(method, gaussian_oracle(mu, s, BETAS), x, BETAS, 100, 10)
    assert out.shape == x.shape
    assert (out - target).abs().max() < TOLERANCE[method]


def test_more_steps_converge_to_the_flow():
    mu, s = 0.3, 0.5
    x, target = start_and_flow_target(100, mu, s)
    oracle = gaussian_oracle(mu, s, BETAS)
    errors = {sp: float((samplers.dpm_solver(oracle, x, BETAS, 100, sp, True) - target).abs().max()) for sp in (10, 5, 2)}
    assert errors[2] < errors[5] < errors[10]
    assert errors[2] < 2e-3
    assert float((samplers.ddim(oracle, x, BETAS, 100, 1) - target).abs().max()) < 0.01


@pytest.mark.parametrize("method,calls", [("ddim", 10), ("pndm", 11), ("dpm-solver", 10), ("dpm-solver++", 10),
                                          ("unipc", 10), (None, 100)])
def test_model_calls_at_41_defaults(method, calls):
    """k_step 100 / speedup 10: one call per step (PNDM adds one for its improved-Euler start)."""
    seen: list[float] = []

    def denoise(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)
    samplers.sample(method, denoise, torch.zeros(1, 2, 3), BETAS, 100, 10)
    assert len(seen) == calls
    assert seen[0] == 99 and min(seen) >= 0


def test_ddpm_samples_the_data_distribution():
    mu, s = 0.1, 0.2  # narrow enough that the x0 clamp to [-1, 1] never bites
    x, _ = start_and_flow_target(1000, mu, s)
    x = torch.randn(16, 8, 100, generator=torch.Generator().manual_seed(3))  # pure noise at t = 999
    out = samplers.sample(None, gaussian_oracle(mu, s, BETAS), x, BETAS, 1000, 1, torch.Generator().manual_seed(4))
    assert abs(out.mean().item() - mu) < 0.01
    assert abs(out.std().item() - s) < 0.01


@pytest.mark.parametrize("method", [None, *METHODS])
def test_infer_shape_finite_and_seeded(method):
    model = tiny_model()
    units, f0, volume, mel = inputs()
    run = lambda seed: model.infer(units, f0, volume, gt_spec=mel, k_step=40, method=method, speedup=10,  # noqa: E731
                                   generator=torch.Generator().manual_seed(seed))
    out = run(7)
    assert out.shape == mel.shape
    assert torch.isfinite(out).all()
    assert torch.equal(out, run(7))
    assert not torch.allclose(out, mel, atol=1e-2)
    torch.manual_seed(5)
    again = model.infer(units, f0, volume, gt_spec=mel, k_step=40, method=method, speedup=10)
    torch.manual_seed(5)
    assert torch.equal(again, model.infer(units, f0, volume, gt_spec=mel, k_step=40, method=method, speedup=10))


def test_pure_diffusion_on_full_chain_model():
    model = tiny_model()
    units, f0, volume, _ = inputs(batch=1)
    out = model.infer(units, f0, volume, method="dpm-solver++", speedup=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 12, 128) and torch.isfinite(out).all()


def test_k_step_zero_returns_input_mel():
    model = tiny_model()
    units, f0, volume, mel = inputs()
    assert torch.equal(model.infer(units, f0, volume, gt_spec=mel, k_step=0), mel)


def test_refusals():
    shallow = tiny_model(k_step_max=50)
    units, f0, volume, mel = inputs()
    with pytest.raises(SvcError, match="k_step 60 is greater than this model's k_step_max 50"):
        shallow.infer(units, f0, volume, gt_spec=mel, k_step=60)
    with pytest.raises(SvcError, match="shallow diffusion only.*cannot run pure diffusion"):
        shallow.infer(units, f0, volume)
    with pytest.raises(SvcError, match="unknown diffusion method 'euler'"):
        shallow.infer(units, f0, volume, gt_spec=mel, k_step=10, method="euler")
    with pytest.raises(SvcError, match="disagree on the frame count"):
        shallow.infer(units, f0[:, :5], volume, gt_spec=mel, k_step=10)
    with pytest.raises(SvcError, match="k_step must be >= 0"):
        shallow.infer(units, f0, volume, gt_spec=mel, k_step=-1)
    multi = tiny_model(n_spk=3)
    with pytest.raises(SvcError, match=r"speaker id \[3\] out of range"):
        multi.infer(units, f0, volume, spk_id=3, gt_spec=mel, k_step=5)
    with pytest.raises(SvcError, match="speaker mix of shape"):
        multi.infer(units, f0, volume, spk_mix=torch.ones(12, 2), gt_spec=mel, k_step=5)


def test_speaker_mix_blends_embeddings_per_frame():
    model = tiny_model(n_spk=3)
    units, f0, volume, _ = inputs(frames=10)
    cond = lambda **kw: model.condition(units, f0, volume, **kw)  # noqa: E731
    c0, c1 = cond(spk_id=0), cond(spk_id=torch.tensor([[1], [1]]))
    assert torch.allclose(cond(spk_mix=torch.tensor([1.0, 0.0, 0.0])), c0, atol=1e-6)
    assert torch.allclose(cond(spk_mix=torch.tensor([0.25, 0.75, 0.0])), 0.25 * c0 + 0.75 * c1, atol=1e-5)
    timeline = torch.zeros(10, 3)
    timeline[:4, 0], timeline[4:, 1] = 1.0, 1.0  # [T, S]: speaker 0 then speaker 1
    mixed = cond(spk_mix=timeline)
    assert torch.allclose(mixed[:, :4], c0[:, :4], atol=1e-6) and torch.allclose(mixed[:, 4:], c1[:, 4:], atol=1e-6)
    batched = cond(spk_mix=timeline.expand(2, 10, 3))
    assert torch.allclose(batched, mixed, atol=1e-6)
    mel = model.infer(units, f0, volume, spk_mix=timeline, gt_spec=-6 + torch.zeros(2, 10, 128), k_step=10,
                      method="unipc", speedup=5, generator=torch.Generator().manual_seed(0))
    assert mel.shape == (2, 10, 128) and torch.isfinite(mel).all()


def test_single_speaker_model_ignores_speaker_arguments():
    model = tiny_model()
    units, f0, volume, _ = inputs()
    assert torch.equal(model.condition(units, f0, volume, spk_id=5), model.condition(units, f0, volume))


def test_pitch_shift_conditioning():
    model = tiny_model()
    units, f0, volume, _ = inputs()
    plain = model.condition(units, f0, volume)
    shift = torch.full((2, 1, 1), 5.0)
    assert torch.allclose(model.condition(units, f0, volume, aug_shift=shift) - plain,
                          model.aug_shift_embed.weight[:, 0].expand_as(plain), atol=1e-5)


def diffusion_config(n_spk: int = 1, **model):
    config = load_template("diffusion_template.yaml")
    config.data.encoder_out_channels = 8
    for key, value in {"n_layers": 2, "n_chans": 16, "n_hidden": 16, "timesteps": 100, "n_spk": n_spk, **model}.items():
        config.model[key] = value
    return config


def test_load_model_round_trip(tmp_path):
    model = tiny_model(n_spk=2)
    save_checkpoint(tmp_path / "model_100.pt", model, 100)
    save_config(diffusion_config(n_spk=2), tmp_path / "config.yaml")
    loaded, config = load_model(tmp_path / "model_100.pt", device="cpu")
    assert config.model.n_spk == 2 and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    units, f0, volume, mel = inputs()
    kw = dict(spk_id=1, gt_spec=mel, k_step=30, method="pndm", speedup=10)
    assert torch.equal(loaded.infer(units, f0, volume, **kw, generator=torch.Generator().manual_seed(1)),
                       model.infer(units, f0, volume, **kw, generator=torch.Generator().manual_seed(1)))


def test_load_model_refuses_mismatched_config(tmp_path):
    save_checkpoint(tmp_path / "model_1.pt", tiny_model(n_spk=2), 1)
    save_config(diffusion_config(n_spk=4), tmp_path / "other.yaml")
    with pytest.raises(SvcError, match=r"spk_embed.weight: checkpoint \(2, 16\) vs model \(4, 16\)"):
        load_model(tmp_path / "model_1.pt", tmp_path / "other.yaml", device="cpu")
    with pytest.raises(SvcError, match="diffusion model not found"):
        load_model(tmp_path / "model_2.pt", tmp_path / "other.yaml")
