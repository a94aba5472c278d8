"""Unit2Mel: content units + f0 + volume (+ speaker, pitch-shift) -> condition -> diffusion mel (spec §11.2).

Parameter names match 4.1 / DDSP-SVC checkpoints (`model_<step>.pt`), so their base models load here;
reading and comparing those files is core.checkpoint's job.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from diffusion import samplers
from diffusion.flow import RectifiedFlow
from diffusion.gaussian import GaussianDiffusion
from diffusion.wavenet import WaveNet
from core.checkpoint import LoadReport, load_weights, read_checkpoint
from core.config import HParams, load_diffusion_config
from core.errors import SvcError


@dataclass(frozen=True)
class Unit2MelDims:
    input_channel: int = 768   # content-unit dimension (data.encoder_out_channels)
    n_spk: int = 1             # speakers; a speaker embedding exists only when > 1
    use_pitch_aug: bool = True  # adds aug_shift_embed (keyshift conditioning)
    out_dims: int = 128        # mel bins (vocoder num_mels)
    n_layers: int = 20         # WaveNet residual layers
    n_chans: int = 512         # WaveNet channels
    n_hidden: int = 256        # condition width
    timesteps: int = 1000      # diffusion chain length
    k_step_max: int = 0        # 0 or >= timesteps: full chain; else a shallow-only model
    objective: str = samplers.DDPM  # "ddpm" (4.1) or "rectified_flow" (diffusion/flow.py)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], out_dims: int = 128) -> "Unit2MelDims":
        """Dims from a diffusion.yaml (data.encoder_out_channels, model.*)."""
        try:
            model, data = config["model"], config["data"]
            return cls(input_channel=int(data["encoder_out_channels"]), n_spk=int(model["n_spk"]),
                       use_pitch_aug=bool(model.get("use_pitch_aug", False)), out_dims=out_dims,
                       n_layers=int(model.get("n_layers", 20)), n_chans=int(model.get("n_chans", 512)),
                       n_hidden=int(model.get("n_hidden", 256)), timesteps=int(model.get("timesteps", 1000)),
                       k_step_max=int(model.get("k_step_max", 0) or 0),
                       objective=config_objective(config))
        except (KeyError, TypeError, ValueError) as error:
            raise SvcError(f"diffusion config lacks or has a bad value for {error}") from None

    @property
    def effective_k_step_max(self) -> int:
        return self.k_step_max if 0 < self.k_step_max < self.timesteps else self.timesteps


DEFAULT_FLOW_STEPS = 8  # integration steps of a rectified-flow model when neither config nor flag says


class Unit2Mel(nn.Module):
    def __init__(self, dims: Unit2MelDims):
        super().__init__()
        self.dims = dims
        self.unit_embed = nn.Linear(dims.input_channel, dims.n_hidden)
        self.f0_embed = nn.Linear(1, dims.n_hidden)
        self.volume_embed = nn.Linear(1, dims.n_hidden)
        self.aug_shift_embed = nn.Linear(1, dims.n_hidden, bias=False) if dims.use_pitch_aug else None
        self.spk_embed = nn.Embedding(dims.n_spk, dims.n_hidden) if dims.n_spk > 1 else None
        wavenet = WaveNet(dims.out_dims, dims.n_layers, dims.n_chans, dims.n_hidden)
        decoder = RectifiedFlow if dims.objective == samplers.RECTIFIED_FLOW else GaussianDiffusion
        self.decoder = decoder(wavenet, dims.out_dims, dims.timesteps, dims.effective_k_step_max)

    @property
    def objective(self) -> str:
        return self.dims.objective

    def checkpoint_extra(self) -> dict[str, str]:
        """Plain keys core.checkpoint adds to a saved `model_<step>.pt`: the objective, for flow models only,
        so DDPM checkpoints stay exactly 4.1's `{global_step, model[, optimizer]}`."""
        return {} if self.objective == samplers.DDPM else {"objective": self.objective}

    @property
    def k_step_max(self) -> int:
        return self.dims.effective_k_step_max

    def condition(self, units: torch.Tensor, f0: torch.Tensor, volume: torch.Tensor,
                  spk_id: torch.Tensor | int | None = None, spk_mix: torch.Tensor | None = None,
                  aug_shift: torch.Tensor | None = None) -> torch.Tensor:
        """units [B, T, D], f0 [B, T, 1] Hz, volume [B, T, 1] -> condition [B, T, H].

        spk_id: int or long [B, 1] (0-based); spk_mix: weights [S], [T, S] or [B, T, S] (used instead of
        spk_id; per frame they blend the speaker embeddings). aug_shift: keyshift in semitones [B, 1, 1].
        """
        x = self.unit_embed(units) + self.f0_embed(torch.log1p(f0 / 700.0)) + self.volume_embed(volume)
        if self.spk_embed is not None:
            x = x + self._speaker(x, spk_id, spk_mix)
        if self.aug_shift_embed is not None and aug_shift is not None:
            x = x + self.aug_shift_embed(aug_shift / 5.0)
        return x

    def _speaker(self, x: torch.Tensor, spk_id: torch.Tensor | int | None,
                 spk_mix: torch.Tensor | None) -> torch.Tensor:
        """Speaker embedding broadcastable to x [B, T, H]."""
        n_spk = self.dims.n_spk
        if spk_mix is not None:
            mix = torch.as_tensor(spk_mix, dtype=x.dtype, device=x.device)
            if mix.shape[-1] != n_spk or mix.dim() > 3 or (mix.dim() >= 2 and mix.shape[-2] not in (1, x.shape[1])):
                raise SvcError(f"speaker mix of shape {tuple(mix.shape)} does not fit {x.shape[1]} frames "
                               f"and {n_spk} speakers; expected [{n_spk}], [T, {n_spk}] or [B, T, {n_spk}]")
            mix = mix.reshape((1,) * (3 - mix.dim()) + tuple(mix.shape))  # [B|1, T|1, S]
            return mix @ self.spk_embed.weight  # [B|1, T|1, H]
        ids = torch.as_tensor(0 if spk_id is None else spk_id, dtype=torch.long, device=x.device)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_spk):
            raise SvcError(f"speaker id {ids.flatten().tolist()} out of range for a diffusion model "
                           f"with {n_spk} speakers")
        return self.spk_embed(ids.reshape(-1, 1) if ids.dim() < 2 else ids)  # [B|1, 1, H]

    def forward(self, units: torch.Tensor, f0: torch.Tensor, volume: torch.Tensor, spk_id: torch.Tensor,
                gt_spec: torch.Tensor, aug_shift: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss (scalar) for mel gt_spec [B, T, M]."""
        cond = self.condition(units, f0, volume, spk_id, aug_shift=aug_shift)
        return self.decoder.loss(cond, gt_spec, generator)

    @torch.no_grad()
    def infer(self, units: torch.Tensor, f0: torch.Tensor, volume: torch.Tensor,
              spk_id: torch.Tensor | int | None = None, spk_mix: torch.Tensor | None = None,
              gt_spec: torch.Tensor | None = None, k_step: int | None = None, method: str | None = "dpm-solver++",
              speedup: int = 10, aug_shift: torch.Tensor | None = None,
              generator: torch.Generator | None = None, steps: int = DEFAULT_FLOW_STEPS) -> torch.Tensor:
        """Mel [B, T, M] (natural log). Shallow diffusion from gt_spec [B, T, M] over its last k_step steps
        (default k_step_max; 0 returns gt_spec), or pure diffusion from noise when gt_spec is None.

        DDPM models: method one of samplers.METHODS, or None for DDPM; speedup <= 1 also means DDPM.
        Rectified-flow models: method one of samplers.FLOW_METHODS, integrated in `steps` steps from
        t0 = 1 - k_step / timesteps; speedup is not used.
        """
        frames = {"units": units.shape[1], "f0": f0.shape[1], "volume": volume.shape[1]}
        if gt_spec is not None:
            frames["gt_spec"] = gt_spec.shape[1]
        if len(set(frames.values())) > 1:
            raise SvcError(f"diffusion inputs disagree on the frame count: {frames}")
        k_step = self._check_k_step(gt_spec, k_step)
        self._check_method(method)
        if gt_spec is not None and k_step == 0:
            return gt_spec.clone()
        cond = self.condition(units, f0, volume, spk_id, spk_mix, aug_shift)
        if self.objective == samplers.RECTIFIED_FLOW:
            if int(steps) < 1:
                raise SvcError(f"flow steps must be at least 1, got {steps}")
            return self.decoder.sample(cond, gt_spec, k_step, method, int(steps), generator)
        return self.decoder.sample(cond, gt_spec, k_step, method, int(speedup), generator)

    def _check_method(self, method: str | None) -> None:
        """A sampler of this model's objective (the message names the right ones)."""
        allowed = samplers.methods_for(self.objective)
        if method in allowed or (method is None and self.objective == samplers.DDPM):
            return
        record = samplers.SAMPLERS.get(str(method))
        kind = f"a {record.objective} sampler, " if record is not None else ""
        raise SvcError(f"unknown diffusion method '{method}' for this {self.objective} model ({kind}"
                       f"use one of {', '.join(allowed)})")

    def _check_k_step(self, gt_spec: torch.Tensor | None, k_step: int | None) -> int:
        if gt_spec is None:
            if self.k_step_max < self.dims.timesteps:
                raise SvcError(f"this diffusion model was trained for shallow diffusion only (k_step_max "
                               f"{self.k_step_max} < timesteps {self.dims.timesteps}); it needs a source mel "
                               "and cannot run pure diffusion (only_diffusion)")
            return self.dims.timesteps
        k_step = self.k_step_max if k_step is None else int(k_step)
        if k_step > self.k_step_max:
            raise SvcError(f"shallow diffusion k_step {k_step} is greater than this model's k_step_max "
                           f"{self.k_step_max}; use k_step <= {self.k_step_max}")
        if k_step < 0:
            raise SvcError(f"shallow diffusion k_step must be >= 0, got {k_step}")
        return k_step


def config_objective(config: Mapping[str, Any]) -> str:
    """model.objective of a diffusion.yaml; absent (every 4.1 file) means ddpm."""
    objective = str(config["model"].get("objective", samplers.DDPM) or samplers.DDPM)
    if objective not in samplers.OBJECTIVES:
        raise SvcError(f"model.objective '{objective}' in the diffusion config is unknown; use one of "
                       f"{', '.join(samplers.OBJECTIVES)}")
    return objective


def checkpoint_objective(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> str:
    """The objective a `model_<step>.pt` dict records; none recorded (4.1's files) means ddpm."""
    objective = checkpoint.get("objective", samplers.DDPM)
    if objective not in samplers.OBJECTIVES:
        raise SvcError(f"{path} records an unknown diffusion objective {objective!r}")
    return str(objective)


def check_objectives(checkpoint: Mapping[str, Any], path: str | os.PathLike, expected: str,
                     config_path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose objective is not the config's (`expected`), naming both."""
    found = checkpoint_objective(checkpoint, path)
    if found != expected:
        raise SvcError(f"{path} is a {found} model but {config_path} says model.objective {expected}; "
                       f"use the config.yaml the model was trained with (or set model.objective: {found})")


def build_model(config: Mapping[str, Any], out_dims: int = 128) -> Unit2Mel:
    return Unit2Mel(Unit2MelDims.from_config(config, out_dims))


def load_model(model_path: str | os.PathLike, config_path: str | os.PathLike | None = None,
               device: str | torch.device | None = None) -> tuple[Unit2Mel, HParams]:
    """Load a diffusion checkpoint `model_<step>.pt` with its diffusion.yaml (default: config.yaml beside it).

    Returns the model in eval mode on `device` (CUDA when available if None) and the config.
    """
    model_path = Path(model_path)
    config_path = Path(config_path) if config_path is not None else model_path.parent / "config.yaml"
    if not model_path.is_file():
        raise SvcError(f"diffusion model not found: {model_path}")
    config = load_diffusion_config(config_path)
    checkpoint = read_checkpoint(model_path, kind="diffusion")
    check_objectives(checkpoint, model_path, config_objective(config), config_path)
    state = checkpoint["model"]
    model = build_model(config, _out_dims(state))
    load_weights(model, state, describe=lambda report: _config_mismatch(model_path, config_path, report))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), config


def _out_dims(state: Mapping[str, torch.Tensor]) -> int:
    weight = state.get("decoder.denoise_fn.input_projection.weight")
    return int(weight.shape[1]) if weight is not None else 128


def _config_mismatch(model_path: Path, config_path: Path, report: LoadReport) -> str:
    problems = report.problems()
    return (f"{model_path} does not match {config_path}: {'; '.join(problems[:5])}"
            f"{' ...' if len(problems) > 5 else ''}. Check model.n_spk, n_layers, n_chans, n_hidden, "
            "timesteps, use_pitch_aug and data.encoder_out_channels in the config")
