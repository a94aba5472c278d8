"""Rectified-flow shallow diffusion: the flow's target and samplers on straight paths, training and resume,
the checkpoint's objective, inference with both kinds of model, and refusals of mismatched files."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core.checkpoint import save_diffusion_checkpoint
from core.config import load_config, load_template, save_config
from core.errors import SvcError
from diffusion import Unit2Mel, Unit2MelDims, build_model, load_model, samplers
from diffusion.flow import RectifiedFlow
from diffusion.gaussian import GaussianDiffusion
from diffusion.dataset import MelDataset
from diffusion.trainer import train, validation_loss
from tests.conftest import captured_logs, run_script
from tests.test_diffusion_train import make_dataset, tiny_config
from tests.tiny_model import SR, add_content_encoder, add_vocoder, save_model, tone

TINY = dict(input_channel=8, n_layers=2, n_chans=16, n_hidden=16, timesteps=100)
FLOW = samplers.RECTIFIED_FLOW


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny models: one torch thread


def tiny_unit2mel(objective: str = FLOW, seed: int = 0, **overrides) -> Unit2Mel:
    torch.manual_seed(seed)
    model = Unit2Mel(Unit2MelDims(**{**TINY, "objective": objective, **overrides}))
    torch.nn.init.normal_(model.decoder.denoise_fn.output_projection.weight, std=0.1)
    return model.eval()


def inputs(frames: int = 12, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, frames, 8, generator=g), 200 + 100 * torch.rand(1, frames, 1, generator=g),
            0.1 * torch.rand(1, frames, 1, generator=g), -6 + 2 * torch.randn(1, frames, 128, generator=g))


class Oracle(torch.nn.Module):
    """A denoiser that knows the target x1: the exact velocity of the straight path towards x1."""

    def __init__(self, x1: torch.Tensor, timesteps: int, noise: torch.Tensor | None = None):
        super().__init__()
        self.x1, self.timesteps, self.noise = x1, timesteps, noise
        self.times: list[float] = []

    def forward(self, x: torch.Tensor, step: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = 1.0 - step[:, None, None] / self.timesteps
        self.times.append(float(t.flatten()[0]))
        if self.noise is not None:  # the path from this noise: a constant velocity
            return self.x1 - self.noise
        return (self.x1 - x) / (1.0 - t)


def test_loss_target_is_the_straight_path_velocity():
    torch.manual_seed(0)
    mel = -6 + 2 * torch.rand(4, 20, 128)
    flow = RectifiedFlow(Oracle(None, 1000), out_dims=128, timesteps=1000)
    flow.denoise_fn.x1 = flow.norm_spec(mel).transpose(1, 2)
    cond = torch.zeros(4, 20, 16)
    assert float(flow.loss(cond, mel, torch.Generator().manual_seed(1))) < 1e-6
    flow.denoise_fn.x1 = -flow.denoise_fn.x1  # another target: the loss sees the difference
    assert float(flow.loss(cond, mel, torch.Generator().manual_seed(1))) > 0.1
    shallow = RectifiedFlow(Oracle(None, 1000), out_dims=128, timesteps=1000, k_step_max=100)
    shallow.denoise_fn.x1 = flow.norm_spec(mel).transpose(1, 2)
    shallow.loss(cond, mel, torch.Generator().manual_seed(1))
    assert min(shallow.denoise_fn.times) >= 0.9  # a shallow-only model trains t in [0.9, 1)


@pytest.mark.parametrize("method", samplers.FLOW_METHODS)
def test_one_step_integrates_a_straight_path_exactly(method):
    g = torch.Generator().manual_seed(3)
    x1, noise = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    velocity = lambda x, t: x1 - noise  # noqa: E731
    for t0, steps in ((0.0, 1), (0.0, 3), (0.7, 1)):
        start = (1 - t0) * noise + t0 * x1
        out = samplers.integrate_flow(method, velocity, start, t0, steps)
        assert torch.allclose(out, x1, atol=1e-5)
    calls: list[float] = []
    samplers.integrate_flow(method, lambda x, t: calls.append(float(t[0])) or torch.zeros_like(x), x1, 0.5, 4)
    assert len(calls) == (4 if method == "euler" else 16) and calls[0] == 0.5 and max(calls) <= 1.0
    euler_towards = lambda x, t: (x1 - x) / (1 - t[:, None, None])  # noqa: E731 - the flow of a point mass at x1
    assert torch.allclose(samplers.euler(euler_towards, noise, 0.0, 1), x1, atol=1e-5)


def test_model_sampling_from_noise_and_from_a_shallow_start():
    model = tiny_unit2mel()
    units, f0, volume, mel = inputs()
    x1 = model.decoder.norm_spec(mel).transpose(1, 2)
    noise = torch.randn(1, 128, 12, generator=torch.Generator().manual_seed(5))
    model.decoder.denoise_fn = Oracle(x1, 100, noise)
    for method in samplers.FLOW_METHODS:
        pure = model.infer(units, f0, volume, method=method, steps=2, generator=torch.Generator().manual_seed(5))
        assert torch.allclose(pure, mel, atol=1e-4)
    model.decoder.denoise_fn.times.clear()
    model.infer(units, f0, volume, gt_spec=mel, k_step=30, method="euler", steps=3)
    assert model.decoder.denoise_fn.times == pytest.approx([0.7, 0.8, 0.9])  # t0 = 1 - 30 / 100
    assert torch.equal(model.infer(units, f0, volume, gt_spec=mel, k_step=0, method="euler"), mel)


def test_samplers_refuse_a_model_of_the_other_objective():
    units, f0, volume, mel = inputs()
    with pytest.raises(SvcError, match="'dpm-solver\\+\\+' for this rectified_flow model .*use one of euler, rk4"):
        tiny_unit2mel().infer(units, f0, volume, gt_spec=mel, k_step=10, method="dpm-solver++")
    with pytest.raises(SvcError, match="'rk4' for this ddpm model \\(a rectified_flow sampler"):
        tiny_unit2mel("ddpm").infer(units, f0, volume, gt_spec=mel, k_step=10, method="rk4")
    with pytest.raises(SvcError, match="flow steps must be at least 1"):
        tiny_unit2mel().infer(units, f0, volume, gt_spec=mel, k_step=10, method="euler", steps=0)
    assert samplers.method_for(FLOW, "dpm-solver++") == "euler"
    assert samplers.method_for(FLOW, "rk4") == "rk4"
    assert samplers.method_for("ddpm", "euler") == "dpm-solver++"
    assert samplers.method_for("ddpm", None) is None and samplers.method_for("ddpm", "unipc") == "unipc"
    assert samplers.method_for(FLOW, None) == "euler" and samplers.method_for(FLOW, "eulr") == "eulr"  # refused later


def diffusion_config(objective: str | None = None):
    config = load_template("diffusion_template.yaml")
    config.data.encoder_out_channels = 64
    config.model.update({"n_layers": 2, "n_chans": 16, "n_hidden": 16, "timesteps": 100, "n_spk": 2})
    if objective is not None:
        config.model.objective = objective
    return config


def test_41_files_unchanged_and_flow_checkpoint_records_objective(tmp_path):
    config = diffusion_config()
    assert "objective" not in load_template("diffusion_template.yaml").model
    ddpm, flow = build_model(config), build_model(diffusion_config(FLOW))
    assert type(ddpm.decoder) is GaussianDiffusion and ddpm.objective == "ddpm"
    assert type(flow.decoder) is RectifiedFlow
    assert {k: v.shape for k, v in ddpm.state_dict().items()} == {k: v.shape for k, v in flow.state_dict().items()}
    save_diffusion_checkpoint(tmp_path / "model_1.pt", ddpm, 1)
    save_diffusion_checkpoint(tmp_path / "model_2.pt", flow, 2)
    assert set(torch.load(tmp_path / "model_1.pt", weights_only=True)) == {"global_step", "model"}
    assert torch.load(tmp_path / "model_2.pt", weights_only=True)["objective"] == FLOW


def test_mismatched_config_refused(tmp_path):
    save_config(diffusion_config(), tmp_path / "ddpm.yaml")
    save_config(diffusion_config(FLOW), tmp_path / "flow.yaml")
    save_config(diffusion_config("score"), tmp_path / "bad.yaml")
    save_diffusion_checkpoint(tmp_path / "model_1.pt", build_model(diffusion_config()), 1)
    save_diffusion_checkpoint(tmp_path / "model_2.pt", build_model(diffusion_config(FLOW)), 2)
    with pytest.raises(SvcError, match=r"model_2.pt is a rectified_flow model but .*ddpm.yaml says model.objective ddpm"):
        load_model(tmp_path / "model_2.pt", tmp_path / "ddpm.yaml", device="cpu")
    with pytest.raises(SvcError, match=r"model_1.pt is a ddpm model but .*flow.yaml says model.objective rectified_flow"):
        load_model(tmp_path / "model_1.pt", tmp_path / "flow.yaml", device="cpu")
    with pytest.raises(SvcError, match="model.objective 'score' .* is unknown; use one of ddpm, rectified_flow"):
        load_model(tmp_path / "model_1.pt", tmp_path / "bad.yaml", device="cpu")
    model, _ = load_model(tmp_path / "model_2.pt", tmp_path / "flow.yaml", device="cpu")
    assert model.objective == FLOW


def test_flow_training_lowers_loss_resumes_and_guards_the_objective(tmp_path):
    config = tiny_config(tmp_path, make_dataset(tmp_path), n_chans=128, interval_val=20, interval_force_save=20)
    config.model.update({"objective": FLOW, "timesteps": 1000})
    expdir = Path(config.env.expdir)
    torch.manual_seed(0)
    assert train(config, max_steps=40) == 40
    checkpoint = torch.load(expdir / "model_40.pt", weights_only=True)
    fresh, trained = build_model(config), build_model(config)
    trained.load_state_dict(checkpoint["model"])
    val_set = MelDataset(Path(config.data.validation_files).read_text().split(), config.spk, 2, "nearest", cache=False)
    before = validation_loss(fresh, val_set, torch.device("cpu"))
    assert before == pytest.approx(1.0 + float((fresh.decoder.norm_spec(val_set[0]["mel"]) ** 2).mean()), abs=0.15)
    assert validation_loss(trained, val_set, torch.device("cpu")) < 0.92 * before
    assert checkpoint["objective"] == FLOW and checkpoint["global_step"] == 40
    assert load_config(expdir / "config.yaml").model.objective == FLOW
    steps: list[int] = []
    assert train(config, max_steps=45, on_step=lambda step, loss: steps.append(step)) == 45
    assert steps == [41, 42, 43, 44, 45]
    model, _ = load_model(expdir / "model_45.pt", device="cpu")
    assert model.objective == FLOW

    config.model.objective = "ddpm"
    with pytest.raises(SvcError, match="model_45.pt is a rectified_flow checkpoint but the config says "
                                       "model.objective ddpm"):
        train(config, max_steps=50)


def test_flow_training_starts_from_a_ddpm_base_model(tmp_path):
    config = tiny_config(tmp_path, make_dataset(tmp_path), save_opt=False, interval_val=5)
    config.model.objective = FLOW
    base = build_model(tiny_config(tmp_path, make_dataset(tmp_path)))
    save_diffusion_checkpoint(Path(config.env.expdir) / "model_0.pt", base, 0)
    with captured_logs("WARNING") as messages:
        assert train(config, max_steps=5) == 5
    assert any("is a ddpm model; its weights start this rectified_flow training" in m for m in messages)
    assert torch.load(Path(config.env.expdir) / "model_5.pt", weights_only=True)["objective"] == FLOW


# ----- inference through the diffusion stage (needs the tiny NSF-HiFiGAN and ContentVec fixtures) --------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flow")
    save_model(root)
    add_content_encoder(root)
    add_vocoder(root)
    (root / "diff").mkdir()
    for objective in ("ddpm", FLOW):
        config = diffusion_config(objective)
        config.vocoder.ckpt = str(root / "pretrain" / "nsf_hifigan" / "model")
        config.spk = {"alto": 0, "tenor": 1}
        save_config(config, root / "diff" / f"{objective}.yaml")
        torch.manual_seed(1)
        model = build_model(config)
        torch.nn.init.normal_(model.decoder.denoise_fn.output_projection.weight, std=0.1)
        save_diffusion_checkpoint(root / "diff" / f"{objective}.pt", model, 0)
    (root / "raw").mkdir()
    sf.write(root / "raw" / "song.wav", tone(1.5), SR)
    return root


def stage_args(root: Path, objective: str, flow_steps: int | None = None) -> argparse.Namespace:
    return argparse.Namespace(device="cpu", diffusion_model_path=str(root / "diff" / f"{objective}.pt"),
                              diffusion_config_path=str(root / "diff" / f"{objective}.yaml"), shallow_diffusion=True,
                              only_diffusion=False, k_step=100, pretrain_dir=str(root / "pretrain"),
                              flow_steps=flow_steps)


@pytest.mark.shared
@pytest.mark.parametrize("objective,method", [("ddpm", "dpm-solver++"), (FLOW, "euler")])
def test_diffusion_stage_picks_the_sampler_of_the_checkpoint(workdir, objective, method):
    from inference.diffusion_stage import DiffusionStage

    stage = DiffusionStage.load(stage_args(workdir, objective, flow_steps=3))
    assert stage.model.objective == objective and stage.method == method
    units, f0, volume, mel = inputs(frames=20)
    units = torch.randn(1, 64, 20, generator=torch.Generator().manual_seed(0))
    out = stage.sample_mel(units, f0[..., 0], volume[..., 0], torch.tensor([[1]]), mel, 40)
    expected = stage.model.infer(units.transpose(1, 2), f0, volume, spk_id=torch.tensor([[1]]), gt_spec=mel,
                                 k_step=40, method=method, speedup=10, steps=3,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, expected) and not torch.allclose(out, mel, atol=1e-2)
    if objective == FLOW:
        assert DiffusionStage.load(stage_args(workdir, FLOW)).flow_steps == 8


@pytest.mark.shared
@pytest.mark.slow
def test_inference_main_with_a_flow_model(workdir, monkeypatch):
    from inference.convert_files import convert_files
    from inference_main import build_parser

    common = ("-m", "G_1.pth", "-c", "config.json", "-d", "cpu", "-n", "song.wav", "-s", "alto")
    flow = ("-dm", "diff/rectified_flow.pt", "-dc", "diff/rectified_flow.yaml")
    monkeypatch.chdir(workdir)
    convert_files(build_parser().parse_args([*common, "-shd", "-ks", "50", "-fs", "2", *flow]))  # in-process: faster
    run_script("inference_main.py", *common, "-od", *flow, cwd=workdir)
    results = sorted(p.name for p in (workdir / "results").iterdir())
    assert len(results) == 2
    for name in results:
        audio, sr = sf.read(workdir / "results" / name, dtype="float32")
        assert sr == SR and abs(len(audio) - 1.5 * SR) <= 512 and np.isfinite(audio).all() and np.abs(audio).max() > 0
    result = run_script("inference_main.py", *common, "-shd", "-fs", "0", *flow, cwd=workdir, check=False)
    assert result.returncode == 2 and "-fs/--flow_steps must be at least 1" in result.stderr
