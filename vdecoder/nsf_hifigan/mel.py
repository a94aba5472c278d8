"""The NSF-HiFiGAN vocoder's mel (spec §11.5): what the diffusion model learns and the vocoder reads.

Natural-log magnitude mel `[B, T, n_mels]` with T = N // hop, from an uncentred STFT of reflect-padded
audio. Needs only the vocoder's config, not its weights, so preprocessing works without the vocoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.audio import resample
from core.dsp import hann_window, mel_filterbank
from vdecoder.nsf_hifigan.config import NSF_HIFIGAN_44K, VocoderConfig

LOG_FLOOR = 1e-5


class MelExtractor:
    """`extractor(audio[B, N], sr, keyshift=0) -> mel[B, N' // hop, n_mels]` (N' = N at the vocoder's rate)."""

    def __init__(self, config: VocoderConfig = NSF_HIFIGAN_44K):
        self.config = config

    @classmethod
    def from_config(cls, config: VocoderConfig | dict[str, Any] | str | Path | None = None) -> "MelExtractor":
        """From a VocoderConfig, a config dict, a config.json path, or None (the 44.1 kHz default)."""
        if config is None:
            return cls()
        if isinstance(config, VocoderConfig):
            return cls(config)
        if isinstance(config, dict):
            return cls(VocoderConfig.from_dict(config))
        return cls(VocoderConfig.load(config))

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def hop_size(self) -> int:
        return self.config.hop_size

    def __call__(self, audio: torch.Tensor, sr: int | None = None, keyshift: float = 0.0) -> torch.Tensor:
        """audio `[B, N]` (or `[N]`) float at `sr` (default: the vocoder's rate) -> `[B, T, n_mels]`."""
        audio = audio.unsqueeze(0) if audio.dim() == 1 else audio
        if sr is not None and sr != self.config.sampling_rate:
            audio = resample_tensor(audio, sr, self.config.sampling_rate)
        return self.log_mel(audio.float(), keyshift).transpose(1, 2)

    def log_mel(self, audio: torch.Tensor, keyshift: float = 0.0) -> torch.Tensor:
        """audio `[B, N]` at the vocoder's rate -> `[B, n_mels, N // hop]` (natural log, floor 1e-5).

        keyshift k (semitones) stretches the analysis window by 2^(k/12): the spectrum of a signal
        pitched up by k then lines up with the original's bins, which 4.1 uses for augmentation.
        """
        c = self.config
        factor = 2.0 ** (keyshift / 12.0)
        n_fft = int(round(c.n_fft * factor))
        win = int(round(c.win_size * factor))
        hop = c.hop_size
        n = audio.shape[-1]
        pad_left = (win - hop) // 2
        pad_right = max((win - hop + 1) // 2, win - n - pad_left)
        mode = "reflect" if pad_right < n else "constant"
        padded = F.pad(audio.unsqueeze(1), (pad_left, pad_right), mode=mode).squeeze(1)  # [B, N + win - hop]
        window = hann_window(win, audio.dtype, str(audio.device))
        stft = torch.stft(padded, n_fft, hop_length=hop, win_length=win, window=window, center=False,
                          onesided=True, return_complex=True)  # [B, n_fft // 2 + 1, T]
        magnitude = torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + 1e-9)
        if keyshift != 0:
            bins = c.n_fft // 2 + 1
            magnitude = F.pad(magnitude, (0, 0, 0, max(0, bins - magnitude.shape[1])))[:, :bins] * (c.win_size / win)
        basis = mel_filterbank(c.sampling_rate, c.n_fft, c.num_mels, float(c.fmin),
                               None if c.fmax is None else float(c.fmax), audio.dtype, str(audio.device))
        return torch.log(torch.clamp(basis @ magnitude, min=LOG_FLOOR))  # [B, n_mels, T]

    def n_frames(self, n_samples: int) -> int:
        """Frames for `n_samples` at the vocoder's rate (one per hop, partial hop dropped)."""
        return n_samples // self.config.hop_size


def resample_tensor(audio: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """soxr resampling of `[B, N]` on the CPU, returned on the input's device and dtype."""
    array = resample(audio.detach().cpu().float().numpy(), sr_in, sr_out)
    return torch.from_numpy(np.ascontiguousarray(array)).to(audio.device, audio.dtype)

