"""NSF-HiFiGAN enhancer (`-eh`, spec §12): re-vocode the So-VITS output with the pretrained mel vocoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.audio import fit_length, resample
from vdecoder.nsf_hifigan import NsfHifiGAN


class Enhancer:
    def __init__(self, model_path: str | Path, device: torch.device):
        self.vocoder = NsfHifiGAN(model_path=model_path, device=device)

    def enhance(self, audio: np.ndarray, sr: int, f0: np.ndarray, hop: int, adaptive_key: float = 0) -> np.ndarray:
        """audio `[N]` at `sr`, f0 `[T]` on the model's frame grid (hop samples at sr) -> audio `[N]` at sr.

        With `adaptive_key` k the audio is first played k semitones lower into the vocoder (resampled to
        sr·2^(k/12)), which suits voices far from the vocoder's training range, and raised back after.
        """
        adaptive_sr = int(100 * round(sr * 2 ** (adaptive_key / 12) / 100))
        shifted = resample(audio.astype(np.float32), sr, adaptive_sr)
        voc_hop = self.vocoder.hop_size
        n_frames = max(len(shifted) // voc_hop, 1)
        source_times = np.arange(len(f0)) * hop / sr
        frame_times = np.arange(n_frames) * voc_hop / adaptive_sr
        f0_grid = np.interp(frame_times, source_times, f0) * (self.vocoder.sample_rate / adaptive_sr)
        device = self.vocoder.device
        mel = self.vocoder.extract_mel(torch.from_numpy(shifted)[None].to(device), self.vocoder.sample_rate)
        f0_grid = np.pad(f0_grid, (0, max(mel.shape[1] - len(f0_grid), 0)), mode="edge")
        f0_tensor = torch.from_numpy(f0_grid.astype(np.float32))[None].to(device)
        with torch.inference_mode():
            out = self.vocoder.vocode(mel, f0_tensor)[0].float().cpu().numpy()
        restored = resample(out, adaptive_sr, sr)
        return fit_length(restored, len(audio))
