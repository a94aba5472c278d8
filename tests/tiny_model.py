"""The tiny So-VITS model the conversion, server and streaming tests share, saved as train.py saves it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tests.conftest import FIXTURES

TINY_MODEL = {"inter_channels": 16, "hidden_channels": 16, "filter_channels": 32, "n_heads": 2, "n_layers": 1,
              "upsample_initial_channel": 32, "gin_channels": 16, "ssl_dim": 64, "n_speakers": 2,
              "n_flow_layer": 2, "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1]]}
SPEAKERS = {"alto": 0, "tenor": 1}
SR = 44100


def save_model(root: Path, config_name: str = "config.json", model_name: str = "G_1.pth", *,
               use_f0_decoder: bool = True, drop_f0_decoder: bool = False) -> None:
    """A tiny model's config and seeded random weights under `root` (speakers alto and tenor)."""
    import torch

    from core.config import load_template, save_config
    from models import SynthesizerTrn

    config = load_template("config_template.json")
    config.model.update(TINY_MODEL)
    config.model.use_automatic_f0_prediction = use_f0_decoder
    config.spk = dict(SPEAKERS)
    save_config(config, root / config_name)
    torch.manual_seed(0)
    state = SynthesizerTrn.from_config(config).state_dict()
    if drop_f0_decoder:
        state = {k: v for k, v in state.items() if not k.startswith("f0_decoder.")}
    torch.save({"model": state, "iteration": 1, "optimizer": None, "learning_rate": 1e-4}, root / model_name)


def add_vocoder(root: Path) -> None:
    """`root/pretrain/nsf_hifigan/{model, config.json}`: the tiny NSF-HiFiGAN of the shared fixtures."""
    (root / "pretrain" / "nsf_hifigan").mkdir(parents=True, exist_ok=True)
    for name in ("model", "config.json"):
        shutil.copy(FIXTURES / "nsf_hifigan" / name, root / "pretrain" / "nsf_hifigan" / name)


def add_content_encoder(root: Path) -> None:
    """`root/pretrain/checkpoint_best_legacy_500.pt`: the tiny ContentVec of the shared fixtures."""
    (root / "pretrain").mkdir(exist_ok=True)
    shutil.copy(FIXTURES / "contentvec" / "checkpoint_best_legacy_500.pt", root / "pretrain")


def tone(seconds: float, sr: int = SR, f0: float = 220.0, start: float = 0.0) -> np.ndarray:
    """Five harmonics of `f0`, silent before `start` seconds, peak 0.3."""
    t = np.arange(int(sr * seconds)) / sr
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.3 * wave / np.abs(wave).max() * (t >= start)).astype(np.float32)
