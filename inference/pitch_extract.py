"""pitch.py's work: the F0 predictor's pitch of one audio file, written as a pitch CSV (inference.pitch_io).

The frame grid (sample rate, hop) is the model's, from its config.json, so that the CSV can be given back to
inference_main.py --pitch_file; the f0 is the one a conversion of the file would use with --export_pitch.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.errors import AudioError

DEFAULT_SR, DEFAULT_HOP = 44100, 512


def model_grid(config_path: str | os.PathLike | None) -> tuple[int, int]:
    """(sample rate, hop) of a So-VITS config.json, or 44100/512 without one."""
    if config_path is None:
        return DEFAULT_SR, DEFAULT_HOP
    from core.config import load_model_config

    config = load_model_config(config_path)
    return int(config.data.sampling_rate), int(config.data.hop_length)


def extract_pitch(audio_path: str | os.PathLike, f0_predictor: str, sr: int, hop: int, threshold: float = 0.05,
                  trans: float = 0.0, device: str | None = None, pretrain_dir: str | os.PathLike = "pretrain"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """-> (f0 Hz `[T]` shifted by `trans` semitones, 0 where unvoiced; voiced `[T]`) on the grid (sr, hop)."""
    from core.audio import load_audio, resample
    from f0_predictor import get_f0_predictor

    audio, file_sr = load_audio(audio_path)
    wav = resample(np.asarray(audio, dtype=np.float32), file_sr, sr)
    if len(wav) < hop:
        raise AudioError(f"{audio_path}: shorter than one frame ({hop} samples at {sr} Hz)")
    predictor = get_f0_predictor(f0_predictor, hop, sr, device, threshold, pretrain_dir)
    f0, uv = predictor.compute_f0_uv(wav)
    return np.where(uv > 0.5, f0 * 2 ** (trans / 12), 0.0), uv


def write_pitch_of(audio_path: str | os.PathLike, out_path: str | os.PathLike | None, f0_predictor: str,
                   config_path: str | os.PathLike | None = None, **options) -> Path:
    """Extract the pitch of `audio_path` and write it to `out_path` (default: `<input stem>.pitch.csv` beside
    it); returns the path written. `options` go to `extract_pitch`."""
    from inference.pitch_io import write_pitch_csv

    sr, hop = model_grid(config_path)
    f0, voiced = extract_pitch(audio_path, f0_predictor, sr, hop, **options)
    target = Path(out_path) if out_path is not None else Path(audio_path).with_suffix(".pitch.csv")
    write_pitch_csv(target, f0, voiced, hop, sr)
    return target
