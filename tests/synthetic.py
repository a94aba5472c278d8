"""A small generated dataset of tones with matching random feature files, for tests and benchmarks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile
import torch

from core import dsp


def write_synthetic_dataset(root: str | os.PathLike, speakers: Sequence[str], *, items_per_speaker: int = 2,
                            seconds: float = 1.0, ssl_dim: int = 768, sampling_rate: int = 44100,
                            hop_length: int = 512, with_volume: bool = False, seed: int = 0) -> list[str]:
    """Write harmonic tones with matching random feature files (for tests, benchmarks and demos).

    Creates `<root>/<speaker>/<n>.wav` (16-bit PCM) with `.wav.soft.pt` (units at 50 frames/s), `.wav.f0.npy`
    (4.1's object array of (f0, uv)) and, with `with_volume`, `.wav.vol.npy`; returns the wav paths.
    """
    rng = np.random.default_rng(seed)
    paths = []
    n_samples = int(seconds * sampling_rate)
    n_frames = n_samples // hop_length
    t = np.arange(n_samples) / sampling_rate
    for speaker in speakers:
        folder = Path(root) / speaker
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(items_per_speaker):
            f0_hz = float(rng.uniform(150, 400))
            audio = sum(0.3 / k * np.sin(2 * np.pi * k * f0_hz * t + rng.uniform(0, 6.28)) for k in range(1, 6))
            audio = (audio * np.minimum(1.0, t * 20)).astype(np.float32)
            path = folder / f"{n:03d}.wav"
            soundfile.write(str(path), audio, sampling_rate, subtype="PCM_16")
            n_units = max(1, int(seconds * 50))
            torch.save(torch.randn(1, ssl_dim, n_units), f"{path}.soft.pt")
            f0 = np.full(n_frames, f0_hz) * (1 + 0.01 * np.sin(np.linspace(0, 6, n_frames)))
            pair = np.asanyarray((f0.astype(np.float64), np.ones(n_frames)), dtype=object)  # (2, T) as 4.1 saves
            np.save(f"{path}.f0.npy", pair, allow_pickle=True)
            if with_volume:
                np.save(f"{path}.vol.npy", dsp.volume(torch.from_numpy(audio), hop_length).numpy())
            paths.append(str(path))
    return paths
