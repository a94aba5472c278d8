"""What a batch of training features is made of, without torch: the settings that decide them, the files they
go to, the dataset's wavs, reading a wav for them and the f0 value as written. preprocess_hubert_f0.py reads
these before torch is imported, so its f0 can start early (preprocess.f0_ahead)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger

from core.audio import load_audio
from core.errors import AudioError
from preprocess.windows import windowed_f0_uv

if TYPE_CHECKING:
    from f0_predictor.base import F0Predictor

SILENCE_PEAK = 1e-5          # below one 16-bit step: the file holds no signal


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that decides the features of a file (plain values, so it travels to worker processes)."""
    speech_encoder: str = "vec768l12"
    f0_predictor: str = "rmvpe"
    sampling_rate: int = 44100
    hop_length: int = 512
    filter_length: int = 2048
    win_length: int = 2048
    write_volume: bool = False          # use_diff or model.vol_embedding
    use_diff: bool = False              # mel, aug_mel, aug_vol
    vocoder_config: str | None = None   # NSF-HiFiGAN config.json for the mel; None: 44.1 kHz/128-bin default
    pretrain_dir: str = "pretrain"
    f0_threshold: float = 0.05
    precision: str = "fp32"             # the speech encoder's arithmetic: fp32 (torch), onnx, auto (see below)

    @property
    def min_samples(self) -> int:
        """Shorter files are refused: the spectrogram's reflect padding and the encoder need this much."""
        return self.filter_length


def feature_paths(wav: Path, settings: FeatureSettings) -> dict[str, Path]:
    """Output name -> path for `wav`, only the outputs these settings produce."""
    wav = Path(wav)
    paths = {
        "soft": wav.with_name(wav.name + ".soft.pt"),
        "f0": wav.with_name(wav.name + ".f0.npy"),
        "spec": wav.with_suffix(".spec.pt"),  # 4.1 replaces .wav here instead of appending
    }
    if settings.write_volume or settings.use_diff:
        paths["vol"] = wav.with_name(wav.name + ".vol.npy")
    if settings.use_diff:
        paths["mel"] = wav.with_name(wav.name + ".mel.npy")
        paths["aug_mel"] = wav.with_name(wav.name + ".aug_mel.npy")
        paths["aug_vol"] = wav.with_name(wav.name + ".aug_vol.npy")
    return paths


def list_wavs(in_dir: Path) -> list[Path]:
    """Every wav (`.wav` in any case) inside the speaker folders of `in_dir` (nested folders included), sorted.

    Hidden wavs (a name starting with '.') are left out, each named once in a warning."""
    found = []
    for path in Path(in_dir).glob("*/**/*"):
        if path.suffix.lower() != ".wav" or not path.is_file():
            continue
        if path.name.startswith("."):
            _warn_hidden(str(path))
        else:
            found.append(path)
    return sorted(found)


@functools.cache
def _warn_hidden(path: str) -> None:
    """Once per file: start_f0_ahead and run_batch both list the dataset in one run."""
    logger.warning(f"skipped {path}: a hidden file (its name starts with '.'); rename it to take it in")


def load_training_audio(wav: Path, settings: FeatureSettings) -> np.ndarray:
    """Read `wav` at the model rate and refuse audio that cannot give features (AudioError)."""
    audio, _ = load_audio(wav, sr=settings.sampling_rate)
    if len(audio) < settings.min_samples:
        raise AudioError(f"{wav} is too short ({len(audio)} samples; at least "
                         f"{settings.min_samples} at {settings.sampling_rate} Hz are needed)")
    if float(np.abs(audio).max()) < SILENCE_PEAK:
        raise AudioError(f"{wav} is silent")
    return audio


def f0_value(predictor: F0Predictor, audio: np.ndarray) -> np.ndarray:
    """The f0 output of `audio` from an f0_predictor: object array `(2, T)` of (f0, uv), as 4.1 saves it.
    Clips over FEATURE_WINDOW_SECONDS are computed in windows (preprocess.windows)."""
    f0, uv = windowed_f0_uv(predictor, audio)
    return np.asanyarray((np.asarray(f0, dtype=np.float64), np.asarray(uv, dtype=np.float64)), dtype=object)
