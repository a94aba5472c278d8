"""Shallow diffusion at inference (`-shd`, `-od`, spec §11.6).

After So-VITS, the output's vocoder mel is noised to step k_step and denoised by the diffusion model,
then vocoded again with NSF-HiFiGAN. A rectified-flow model starts instead at time 1 - k_step / timesteps and
integrates its velocity in `flow_steps` steps (-fs, else the config's infer.flow_steps, else 8). With
only_diffusion there is no So-VITS model: the source drives units, f0 and volume, and the mel is sampled from
pure noise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from inference.svc import ENCODER_SR, ClipInputs, ConversionOptions, Svc
from core.audio import fit_length, resample
from core.dsp import repeat_expand_2d, volume
from core.errors import ConfigError, SvcError


class DiffusionStage:
    """The loaded diffusion model with its vocoder; the sampler follows the model's objective: the config's
    infer.method when it is one of that objective's samplers, else its default (dpm-solver++ or euler)."""

    def __init__(self, model, config, vocoder, device: torch.device, flow_steps: int | None = None):
        from diffusion import samplers
        from diffusion.unit2mel import DEFAULT_FLOW_STEPS

        self.model = model
        self.config = config
        self.vocoder = vocoder
        self.device = device
        configured = config.infer.get("method", "dpm-solver++")
        self.method = samplers.method_for(model.objective, configured)
        if self.method != configured:
            logger.info(f"the diffusion model is a {model.objective} model: sampling with {self.method} "
                        f"instead of infer.method {configured}")
        self.speedup = int(config.infer.get("speedup", 10))
        self.flow_steps = int(flow_steps or config.infer.get("flow_steps", DEFAULT_FLOW_STEPS))

    @classmethod
    def load(cls, args: argparse.Namespace) -> "DiffusionStage":
        from diffusion import load_model
        from vdecoder.nsf_hifigan import NsfHifiGAN

        device = torch.device(args.device) if args.device else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        model_path, config_path = Path(args.diffusion_model_path), Path(args.diffusion_config_path)
        if not model_path.is_file():
            raise SvcError(f"diffusion model not found: {model_path} (-dm); train one with train_diff.py")
        if not config_path.is_file():
            raise SvcError(f"diffusion config not found: {config_path} (-dc)")
        model, config = load_model(model_path, config_path, device)
        if args.shallow_diffusion and not args.only_diffusion and args.k_step > model.k_step_max:
            raise ConfigError(f"-ks/--k_step {args.k_step} is greater than the diffusion model's k_step_max "
                              f"{model.k_step_max}; use a k_step of at most {model.k_step_max}")
        vocoder_path = Path(config.vocoder.get("ckpt", "pretrain/nsf_hifigan/model"))
        if not vocoder_path.is_file():
            vocoder_path = Path(args.pretrain_dir) / "nsf_hifigan" / "model"
        vocoder = NsfHifiGAN.from_type(config.vocoder.get("type", "nsf-hifigan"), vocoder_path, device)
        return cls(model, config, vocoder, device, getattr(args, "flow_steps", None))

    def standalone_svc(self, args: argparse.Namespace) -> "DiffusionOnlySvc":
        return DiffusionOnlySvc(self, args)

    def sample_mel(self, units: torch.Tensor, f0: torch.Tensor, vol: torch.Tensor, g: torch.Tensor,
                   gt_spec: torch.Tensor | None, k_step: int | None) -> torch.Tensor:
        """units `[1, D, T]`, f0/vol `[1, T]`, g: speaker id `[[sid]]` or mix weights `[T, S]` -> mel `[1, T, M]`."""
        expected = int(self.config.data.encoder_out_channels)
        if units.shape[1] != expected:
            raise ConfigError(f"the diffusion model expects {expected}-dim units but the speech encoder gives "
                              f"{units.shape[1]}; train it with the same speech_encoder as the So-VITS model")
        spk_id, spk_mix = (None, g) if g.is_floating_point() else (g, None)
        if spk_mix is not None and self.model.dims.n_spk <= 1:
            spk_mix, spk_id = None, 0
        generator = torch.Generator(device=self.device).manual_seed(0)
        return self.model.infer(units.transpose(1, 2).float(), f0[..., None].float(), vol[..., None].float(),
                                spk_id=spk_id, spk_mix=spk_mix, gt_spec=gt_spec, k_step=k_step,
                                method=self.method, speedup=self.speedup, generator=generator,
                                steps=self.flow_steps)

    def refine(self, svc: Svc, audio: np.ndarray, units: torch.Tensor, f0: torch.Tensor,
               vol: torch.Tensor | None, g: torch.Tensor, opts: ConversionOptions) -> np.ndarray:
        """Shallow diffusion over So-VITS output `audio` `[N]`; returns audio of the same length."""
        sr = svc.target_sample
        wav = torch.from_numpy(audio)[None].to(self.device)
        mel = self.vocoder.extract_mel(wav, sr)                          # [1, T, M]
        n = min(mel.shape[1], f0.shape[1])
        if vol is None:
            vol = volume(wav, svc.hop_length)
        if opts.second_encoding:
            encoded = svc.encoder(torch.from_numpy(resample(audio, sr, ENCODER_SR)))[0]
            units = repeat_expand_2d(encoded, f0.shape[1], svc.unit_interpolate_mode)[None]
        g = g[:n] if g.is_floating_point() else g
        out = self.sample_mel(units[..., :n], f0[:, :n], vol[:, :n], g, mel[:, :n], opts.k_step)
        result = self.vocoder.vocode(out, f0[:, :n])[0].float().cpu().numpy()
        return fit_length(result, len(audio))


class DiffusionOnlySvc(Svc):
    """`-od`: units, f0 and volume from the source drive pure diffusion; no So-VITS model is loaded."""

    def __init__(self, stage: DiffusionStage, args: argparse.Namespace):
        from vencoder import get_speech_encoder

        config = stage.config
        self.stage = stage
        self.device = stage.device
        self.config = config
        self.target_sample = int(config.data.sampling_rate)
        self.hop_length = int(config.data.block_size)
        self.spk2id = {str(k): int(v) for k, v in config.get("spk", {"speaker": 0}).items()}
        self.unit_interpolate_mode = config.data.get("unit_interpolate_mode", "left")
        self.vol_embedding = True
        self.can_predict_f0 = False
        self.pretrain_dir = Path(args.pretrain_dir)
        self.encoder = get_speech_encoder(config.data.encoder, self.device, self.pretrain_dir)
        self.cluster = None
        self.feature_retrieval = False
        self.enhancer = None
        self.diffusion = None
        self._f0_predictors = {}
        self.precision = "fp32"  # no So-VITS network to run at another precision

    def synthesize(self, x: ClipInputs, wav: np.ndarray, opts: ConversionOptions,
                   frames: tuple[int, int] | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """Every frame is sampled and vocoded (`frames` is a hint this path does not use)."""
        mel = self.stage.sample_mel(x.units, x.f0, x.vol, x.g, gt_spec=None, k_step=None)
        audio = self.stage.vocoder.vocode(mel, x.f0)[0].float().cpu().numpy()
        return fit_length(audio, x.f0.shape[1] * self.hop_length), x.f0
