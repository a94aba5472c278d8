"""Diffusion training data from preprocess_hubert_f0.py's feature files (spec §4.3, §11.4).

For a list entry `X.wav`: `X.wav.soft.pt` (units [1, D, T_enc]), `X.wav.f0.npy` (object array (f0, uv)),
`X.wav.vol.npy`, `X.wav.mel.npy` ([T, M]), `X.wav.aug_mel.npy` (object array (mel, keyshift)),
`X.wav.aug_vol.npy`. Every file is read through core.feature_io, which never runs code from it. Units are
stretched to the f0 length, then everything is cut to the shortest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from loguru import logger
from torch.utils.data import Dataset

from core.dsp import repeat_expand_2d
from core.errors import SvcError
from core.feature_io import load_array, load_aug_mel, load_f0, load_units


@dataclass
class ClipFeatures:
    """All frame-aligned features of one clip (T frames)."""
    units: torch.Tensor     # [T, D]
    f0: torch.Tensor        # [T] Hz
    volume: torch.Tensor    # [T]
    mel: torch.Tensor       # [T, M]
    aug_mel: torch.Tensor   # [T, M]
    aug_volume: torch.Tensor  # [T]
    keyshift: float         # semitones of aug_mel

    @property
    def n_frames(self) -> int:
        return self.f0.shape[0]

    def to(self, device: str | torch.device, half: bool) -> "ClipFeatures":
        """Move to `device`; `half` stores units and mels as float16 (they are cast back per batch)."""
        def big(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, torch.float16 if half else torch.float32)
        return ClipFeatures(big(self.units), self.f0.to(device), self.volume.to(device), big(self.mel),
                            big(self.aug_mel), self.aug_volume.to(device), self.keyshift)


def read_filelist(path: str | os.PathLike) -> list[str]:
    """Wav paths of a filelist (first `|` field of each non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise SvcError(f"filelist not found: {path}; run preprocess_flist_config.py first")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("|")[0].strip() for line in lines if line.strip()]


def _need(wav: str, suffix: str) -> Path:
    path = Path(wav + suffix)
    if not path.is_file():
        raise SvcError(f"missing feature file {path}; run preprocess_hubert_f0.py with --use_diff")
    return path


def _float_array(path: Path, ndim: int) -> torch.Tensor:
    """A plain .npy feature file (.vol, .mel, .aug_vol) as float32."""
    return torch.from_numpy(load_array(path, ndim).astype(np.float32))


def read_f0(wav: str) -> torch.Tensor:
    """f0 [T] in Hz from `.wav.f0.npy` (object array (f0, uv), read without unpickling arbitrary objects)."""
    return torch.from_numpy(load_f0(_need(wav, ".f0.npy"))[0].astype(np.float32))


def load_clip(wav: str, interpolate_mode: str) -> ClipFeatures:
    """Read every feature file of one clip, stretch units to the f0 length and cut all to the shortest."""
    f0 = read_f0(wav)
    units = load_units(_need(wav, ".soft.pt"))  # [1, D, T_enc]
    units = repeat_expand_2d(units[0].float(), f0.shape[0], interpolate_mode).T  # [T, D]
    aug_mel, keyshift = load_aug_mel(_need(wav, ".aug_mel.npy"))
    aug_mel = torch.from_numpy(aug_mel)
    parts = [units, f0, _float_array(_need(wav, ".vol.npy"), 1), _float_array(_need(wav, ".mel.npy"), 2),
             aug_mel, _float_array(_need(wav, ".aug_vol.npy"), 1)]
    n = min(p.shape[0] for p in parts)
    units, f0, vol, mel, aug_mel, aug_vol = (p[:n] for p in parts)
    return ClipFeatures(units, f0, vol, mel, aug_mel, aug_vol, keyshift)


def speaker_id(wav: str, spk_map: Mapping[str, int], n_spk: int) -> int:
    """Speaker id from the parent folder name (unknown names -> 0), checked against n_spk."""
    spk = int(spk_map.get(Path(wav).parent.name, 0))
    if not 0 <= spk < n_spk:
        raise SvcError(f"speaker '{Path(wav).parent.name}' has id {spk} but model.n_spk is {n_spk}; "
                       "set model.n_spk to the number of speakers in spk")
    return spk


class MelDataset(Dataset):
    """Training crops (`crop_frames` > 0, random window, optional pitch augmentation) or whole clips."""

    def __init__(self, wavs: list[str], spk_map: Mapping[str, int], n_spk: int, interpolate_mode: str,
                 crop_frames: int = 0, use_aug: bool = False, cache: bool = True,
                 cache_device: str | torch.device = "cpu", cache_fp16: bool = False):
        self.interpolate_mode = interpolate_mode
        self.crop_frames = crop_frames
        self.use_aug = use_aug
        self.cache = cache
        items = [(wav, speaker_id(wav, spk_map, n_spk)) for wav in wavs]
        if crop_frames:
            items = self._long_enough(items)
        self.items = items
        self.cached = [load_clip(w, interpolate_mode).to(cache_device, cache_fp16) for w, _ in items] if cache else []

    def _long_enough(self, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
        kept = []
        for wav, spk in items:
            n = read_f0(wav).shape[0]
            if n < self.crop_frames:
                logger.warning(f"skipping {wav}: {n} frames, shorter than the {self.crop_frames}-frame "
                               "training crop (data.duration)")
            else:
                kept.append((wav, spk))
        if items and not kept:
            raise SvcError(f"no training clip is at least {self.crop_frames} frames long; "
                           "lower data.duration in the diffusion config or use longer clips")
        return kept

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        wav, spk = self.items[index]
        clip = self.cached[index] if self.cache else load_clip(wav, self.interpolate_mode)
        start, end = 0, clip.n_frames
        if self.crop_frames:
            start = int(torch.randint(0, clip.n_frames - self.crop_frames + 1, ()).item())
            end = start + self.crop_frames
        aug = self.use_aug and bool(torch.randint(0, 2, ()).item())
        keyshift = clip.keyshift if aug else 0.0
        f0 = clip.f0[start:end] * 2.0 ** (keyshift / 12.0)
        return {
            "name": wav,
            "units": clip.units[start:end],                                   # [T, D]
            "f0": f0[:, None],                                                # [T, 1]
            "volume": (clip.aug_volume if aug else clip.volume)[start:end, None],  # [T, 1]
            "mel": (clip.aug_mel if aug else clip.mel)[start:end],            # [T, M]
            "spk_id": torch.tensor([spk], dtype=torch.long),                  # [1]
            "aug_shift": torch.tensor([[keyshift]], dtype=torch.float32),     # [1, 1]
        }
