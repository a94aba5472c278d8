"""Loading and running the pretrained NSF-HiFiGAN vocoder (`pretrain/nsf_hifigan/{model,config.json}`)."""
from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ConfigError, SvcError
from core.fileio import safe_torch_load
from core.pretrained import require_pretrained
from vdecoder.nsf_hifigan.config import VocoderConfig
from vdecoder.nsf_hifigan.mel import MelExtractor
from vdecoder.nsf_hifigan.models import Generator, fuse_weight_norm

DEFAULT_MODEL_PATH = Path("pretrain") / "nsf_hifigan" / "model"
LOG10_SCALE = 0.434294  # ln -> log10, for vocoders trained on log10 mels
VOCODER_TYPES = ("nsf-hifigan", "nsf-hifigan-log10")


def load_generator(model_path: str | Path, config: VocoderConfig, device: torch.device | str = "cpu") -> Generator:
    """Build the generator for `config` and load the `generator` state dict of `model_path` (weight norm folded)."""
    checkpoint = safe_torch_load(model_path, map_location="cpu")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("generator"), dict):
        raise SvcError(f"{model_path} is not an NSF-HiFiGAN checkpoint (no 'generator' state dict)")
    generator = Generator(config)
    state = fuse_weight_norm(checkpoint["generator"])
    expected = generator.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise SvcError(f"{model_path} does not fit the config.json beside it: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}, wrong shape {mismatched[:3]}")
    generator.load_state_dict(state)
    return generator.to(device).eval()


class NsfHifiGAN:
    """The mel vocoder used by shallow diffusion and the enhancer.

    `config.json` is read from the model's folder now; the weights on the first `vocode` (or `load()`).
    `log10_mel=True` is 4.1's vocoder type 'nsf-hifigan-log10': mels are natural-log as everywhere,
    and are scaled to log10 just before the generator.
    """

    def __init__(self, model_path: str | Path = DEFAULT_MODEL_PATH, device: torch.device | str | None = None,
                 log10_mel: bool = False):
        self.model_path = Path(model_path)
        config_path = self.model_path.parent / "config.json"
        what = "the NSF-HiFiGAN vocoder (shallow diffusion / --enhance)"
        require_pretrained(self.model_path, what)
        require_pretrained(config_path, what)
        self.config = VocoderConfig.load(config_path)
        self.mel_extractor = MelExtractor(self.config)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.log10_mel = log10_mel
        self.generator: Generator | None = None

    @classmethod
    def from_type(cls, vocoder_type: str, model_path: str | Path = DEFAULT_MODEL_PATH,
                  device: torch.device | str | None = None) -> "NsfHifiGAN":
        """By diffusion.yaml's `vocoder.type`: 'nsf-hifigan' or 'nsf-hifigan-log10'."""
        if vocoder_type not in VOCODER_TYPES:
            raise ConfigError(f"unknown vocoder type '{vocoder_type}'; choose one of: {', '.join(VOCODER_TYPES)}")
        return cls(model_path, device, log10_mel=vocoder_type == "nsf-hifigan-log10")

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def hop_size(self) -> int:
        return self.config.hop_size

    @property
    def num_mels(self) -> int:
        return self.config.num_mels

    def load(self) -> Generator:
        if self.generator is None:
            self.generator = load_generator(self.model_path, self.config, self.device)
        return self.generator

    def extract_mel(self, audio: torch.Tensor, sr: int, keyshift: float = 0.0) -> torch.Tensor:
        """audio `[B, N]` at `sr` -> natural-log mel `[B, T, num_mels]` on the vocoder's device."""
        return self.mel_extractor(audio.to(self.device), sr, keyshift)

    def vocode(self, mel: torch.Tensor, f0: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """mel `[B, T, num_mels]`, f0 `[B, T']` or `[B, T', 1]` in Hz with T' >= T -> audio `[B, T * hop]`.

        `deterministic=True` uses zero initial phases and no source noise (reproducible output).
        """
        generator = self.load()
        f0 = f0[..., 0] if f0.dim() == 3 else f0
        if f0.shape[1] < mel.shape[1]:
            raise SvcError(f"vocoder got {f0.shape[1]} f0 frames for {mel.shape[1]} mel frames")
        mel = mel.to(self.device, torch.float32)
        if self.log10_mel:
            mel = mel * LOG10_SCALE
        with torch.inference_mode():
            audio = generator(mel.transpose(1, 2), f0[:, :mel.shape[1]].to(self.device, torch.float32),
                              deterministic)  # [B, 1, T * hop]
        return audio[:, 0]
