"""Signal helpers shared by preprocessing, training and inference (spec §6).

Pure functions of their arguments; filter banks and windows are cached by `functools.lru_cache`
on exactly the arguments that determine them.
"""
from __future__ import annotations

import functools

import librosa
import numpy as np
import torch
import torch.nn.functional as F

F0_BIN = 256
F0_MIN = 50.0
F0_MAX = 1100.0
F0_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
F0_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)


@functools.lru_cache(maxsize=16)
def hann_window(win_length: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.hann_window(win_length, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None,
                   dtype: torch.dtype, device: str) -> torch.Tensor:
    """librosa's Slaney-normalised mel filters `[n_mels, n_fft // 2 + 1]`."""
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return torch.from_numpy(basis).to(dtype=dtype, device=device)


def spectrogram(audio: torch.Tensor, n_fft: int = 2048, hop_length: int = 512, win_length: int = 2048) -> torch.Tensor:
    """Linear magnitude spectrogram (spec §6.1): `[B, N]` -> `[B, n_fft//2+1, N // hop]`.

    Reflect padding of (n_fft - hop)/2 on both sides and center=False give one frame per hop.
    """
    pad = (n_fft - hop_length) // 2
    padded = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = hann_window(win_length, audio.dtype, str(audio.device))
    stft = torch.stft(padded, n_fft, hop_length=hop_length, win_length=win_length, window=window,
                      center=False, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + 1e-6)


def spec_to_mel(spec: torch.Tensor, sr: int = 44100, n_fft: int = 2048, n_mels: int = 80,
                fmin: float = 0.0, fmax: float | None = 22050) -> torch.Tensor:
    """Natural-log mel of a linear magnitude spectrogram: `[B, F, T]` -> `[B, n_mels, T]`."""
    basis = mel_filterbank(sr, n_fft, n_mels, float(fmin), None if fmax is None else float(fmax),
                           spec.dtype, str(spec.device))
    return torch.log(torch.clamp(torch.matmul(basis, spec), min=1e-5))


def mel_spectrogram(audio: torch.Tensor, sr: int = 44100, n_fft: int = 2048, n_mels: int = 80,
                    hop_length: int = 512, win_length: int = 2048, fmin: float = 0.0,
                    fmax: float | None = 22050) -> torch.Tensor:
    """The training-loss mel (spec §6.2): `[B, N]` -> `[B, n_mels, N // hop]`."""
    return spec_to_mel(spectrogram(audio, n_fft, hop_length, win_length), sr, n_fft, n_mels, fmin, fmax)


def volume(audio: torch.Tensor, hop_length: int = 512) -> torch.Tensor:
    """Centred frame RMS (spec §6.3): `[B, N]` (or `[N]`) -> `[B, N // hop]` (or `[N // hop]`)."""
    squeeze = audio.dim() == 1
    x = audio.unsqueeze(0) if squeeze else audio
    n_frames = x.shape[-1] // hop_length
    padded = F.pad(x.pow(2).unsqueeze(1), (hop_length // 2, (hop_length + 1) // 2), mode="reflect").squeeze(1)
    frames = padded.unfold(-1, hop_length, hop_length)[:, :n_frames]
    rms = frames.mean(dim=-1).sqrt()
    return rms[0] if squeeze else rms


def f0_to_coarse(f0: torch.Tensor) -> torch.Tensor:
    """Map f0 in Hz to 256 mel-spaced pitch bins (spec §6.4), int64 in [0, 255].

    4.1 maps bins >= 256 to 0 rather than 255; trained models expect exactly that, so it is kept.
    """
    f0_mel = 1127.0 * torch.log(1.0 + f0 / 700.0)
    scaled = (f0_mel - F0_MEL_MIN) * (F0_BIN - 2) / (F0_MEL_MAX - F0_MEL_MIN) + 1
    coarse = torch.round(torch.where(f0_mel > 0, scaled, f0_mel)).long()
    coarse = torch.where(coarse <= 0, torch.ones_like(coarse), coarse)
    return torch.where(coarse >= F0_BIN, torch.zeros_like(coarse), coarse)


def repeat_expand_2d(content: torch.Tensor, target_len: int, mode: str = "left") -> torch.Tensor:
    """Stretch content features `[D, T_src]` to `[D, target_len]` (spec §6.6).

    "left": frame i takes source frame floor(i * T_src / target_len). 4.1 walks the source one frame
    per target frame at most, so when shrinking it takes the first target_len frames; that is kept
    so features line up with models trained by 4.1. Any other mode is a torch interpolation mode.
    """
    if mode == "left":
        src_len = content.shape[-1]
        index = torch.div(torch.arange(target_len, device=content.device) * src_len, target_len,
                          rounding_mode="floor")
        index = torch.minimum(index, torch.arange(target_len, device=content.device))
        return content[:, index]
    return F.interpolate(content[None], size=target_len, mode=mode)[0]
