"""RMVPE ('rmvpe'): a deep U-Net over a 16 kHz log-mel, a bi-GRU and a 360-bin pitch salience (spec §8,
formats/rmvpe.json). Weights: `pretrain/rmvpe.pt`, key `model`; sizes are read from the tensor shapes."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
from torch import nn

from f0_predictor.base import F0Predictor, pick_device, resample_ceil, resize_nearest
from core.fileio import safe_torch_load
from core.pretrained import require_pretrained
from core.registry import F0_PREDICTOR_RECORDS

RMVPE_SR = 16000
N_FFT = 1024
HOP = 160
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191
FRAME_MULTIPLE = 32  # 5 poolings by 2 along time


@dataclass(frozen=True)
class RMVPEDims:
    n_blocks: int = 4          # ConvBlockRes per U-Net stage
    en_de_layers: int = 5      # encoder / decoder stages
    inter_layers: int = 4      # intermediate stages
    en_out_channels: int = 16  # channels of the first stage, doubled per stage
    n_mels: int = 128
    n_gru: int = 1             # 0: no GRU, the head is a single Linear
    gru_hidden: int = 256
    n_class: int = 360

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "RMVPEDims":
        def count(pattern: str) -> int:
            return len({m.group(1) for key in state if (m := re.match(pattern, key))})
        n_gru = count(r"fc\.0\.gru\.weight_ih_l(\d+)$")
        n_mels = (state["fc.0.gru.weight_ih_l0"].shape[1] if n_gru else state["fc.0.weight"].shape[1]) // 3
        return cls(n_blocks=count(r"unet\.encoder\.layers\.0\.conv\.(\d+)\."),
                   en_de_layers=count(r"unet\.encoder\.layers\.(\d+)\."),
                   inter_layers=count(r"unet\.intermediate\.layers\.(\d+)\."),
                   en_out_channels=state["unet.encoder.layers.0.conv.0.conv.0.weight"].shape[0],
                   n_mels=n_mels, n_gru=n_gru,
                   gru_hidden=state["fc.0.gru.weight_hh_l0"].shape[1] if n_gru else 256,
                   n_class=state["fc.1.weight" if n_gru else "fc.0.weight"].shape[0])


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01)


class ConvBlockRes(nn.Module):
    """Two 3x3 conv -> BN -> ReLU, plus a residual (1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), batch_norm(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), batch_norm(c_out), nn.ReLU())
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + (x if self.shortcut is None else self.shortcut(x))


class ResStage(nn.Module):
    """n ConvBlockRes (the first changes the width); `pool` halves time and mel afterwards."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, pool: bool):
        super().__init__()
        self.conv = nn.ModuleList([ConvBlockRes(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)])
        self.pool = nn.AvgPool2d(2) if pool else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (stage output before pooling = the skip, pooled output)."""
        for block in self.conv:
            x = block(x)
        return x, (x if self.pool is None else self.pool(x))


class UpStage(nn.Module):
    """Transposed conv doubling time and mel, concatenation with the skip, then n ConvBlockRes."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
            batch_norm(c_out), nn.ReLU())
        self.conv2 = nn.ModuleList([ConvBlockRes(2 * c_out if i == 0 else c_out, c_out) for i in range(n_blocks)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.conv1(x), skip], dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class Encoder(nn.Module):
    def __init__(self, dims: RMVPEDims):
        super().__init__()
        self.bn = batch_norm(1)
        widths = [1] + [dims.en_out_channels * 2 ** i for i in range(dims.en_de_layers)]
        self.layers = nn.ModuleList([ResStage(widths[i], widths[i + 1], dims.n_blocks, pool=True)
                                     for i in range(dims.en_de_layers)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.bn(x)
        skips = []
        for layer in self.layers:
            skip, x = layer(x)
            skips.append(skip)
        return x, skips


class Intermediate(nn.Module):
    def __init__(self, c_in: int, dims: RMVPEDims):
        super().__init__()
        self.layers = nn.ModuleList([ResStage(c_in if i == 0 else 2 * c_in, 2 * c_in, dims.n_blocks, pool=False)
                                     for i in range(dims.inter_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)[1]
        return x


class TimbreFilter(nn.Module):
    """Present in the weight file but not used by the forward pass; kept so loading is strict."""

    def __init__(self, dims: RMVPEDims):
        super().__init__()
        widths = [dims.en_out_channels * 2 ** i for i in range(dims.en_de_layers)]
        self.layers = nn.ModuleList([ConvBlockRes(c, c) for c in widths])


class Decoder(nn.Module):
    def __init__(self, c_in: int, dims: RMVPEDims):
        super().__init__()
        widths = [c_in // 2 ** i for i in range(dims.en_de_layers + 1)]
        self.layers = nn.ModuleList([UpStage(widths[i], widths[i + 1], dims.n_blocks)
                                     for i in range(dims.en_de_layers)])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer, skip in zip(self.layers, reversed(skips)):
            x = layer(x, skip)
        return x


class DeepUnet(nn.Module):
    def __init__(self, dims: RMVPEDims):
        super().__init__()
        deepest = dims.en_out_channels * 2 ** (dims.en_de_layers - 1)
        self.encoder = Encoder(dims)
        self.intermediate = Intermediate(deepest, dims)
        self.tf = TimbreFilter(dims)
        self.decoder = Decoder(2 * deepest, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGRU(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_layers: int):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=n_layers, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class E2E0(nn.Module):
    """log-mel [B, n_mels, T] (T a multiple of 32) -> salience [B, T, n_class] in (0, 1)."""

    def __init__(self, dims: RMVPEDims = RMVPEDims()):
        super().__init__()
        self.unet = DeepUnet(dims)
        self.cnn = nn.Conv2d(dims.en_out_channels, 3, 3, padding=1)
        if dims.n_gru:
            self.fc = nn.Sequential(BiGRU(3 * dims.n_mels, dims.gru_hidden, dims.n_gru),
                                    nn.Linear(2 * dims.gru_hidden, dims.n_class), nn.Dropout(0.25), nn.Sigmoid())
        else:
            self.fc = nn.Sequential(nn.Linear(3 * dims.n_mels, dims.n_class), nn.Dropout(0.25), nn.Sigmoid())

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        image = mel.transpose(-1, -2).unsqueeze(1)  # [B, 1, T, n_mels]
        x = self.cnn(self.unet(image))  # [B, 3, T, n_mels]
        x = x.transpose(1, 2).flatten(-2)  # [B, T, 3 * n_mels], channel-major
        return self.fc(x)


class RMVPEMel(nn.Module):
    """16 kHz audio [B, N] -> natural-log HTK mel [B, 128, 1 + N // 160] (centred STFT, reflect padding)."""

    def __init__(self, n_mels: int = 128, fmin: float = 30.0, fmax: float = 8000.0):
        super().__init__()
        basis = librosa.filters.mel(sr=RMVPE_SR, n_fft=N_FFT, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=True)
        self.register_buffer("basis", torch.from_numpy(basis), persistent=False)  # [n_mels, 513]
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.shape[-1] <= N_FFT // 2:  # reflect padding needs more samples than it pads
            audio = nn.functional.pad(audio, (0, N_FFT // 2 + 1 - audio.shape[-1]))
        spec = torch.stft(audio, N_FFT, HOP, N_FFT, self.window, center=True, return_complex=True)
        magnitude = torch.sqrt(spec.real ** 2 + spec.imag ** 2)  # [B, 513, T]
        return torch.log(torch.clamp(self.basis @ magnitude, min=1e-5))


def load_rmvpe(path: Path, device: torch.device) -> E2E0:
    state = safe_torch_load(require_pretrained(path, "f0 predictor rmvpe"), map_location="cpu")["model"]
    model = E2E0(RMVPEDims.from_state_dict(state))
    model.load_state_dict(state, strict=True)
    # channels-last (NHWC) weights make every conv of the U-Net take oneDNN's fast path (~10% on CPU)
    return model.float().eval().to(device, memory_format=torch.channels_last)


def salience_to_f0(salience: np.ndarray, threshold: float) -> np.ndarray:
    """salience [T, 360] -> f0 [T] float32 Hz: weighted mean of bin cents over argmax +-4 (cut at the
    edges), 0 unless the peak salience exceeds `threshold`."""
    salience = np.asarray(salience, dtype=np.float32)
    n_frames, n_bins = salience.shape
    cents_of_bin = CENTS_PER_BIN * np.arange(n_bins) + CENTS_OFFSET  # float64
    padded = np.pad(salience, ((0, 0), (4, 4)))
    padded_cents = np.pad(cents_of_bin, 4)
    window = salience.argmax(axis=1)[:, None] + np.arange(9)  # padded indices of argmax-4 .. argmax+4
    weights = padded[np.arange(n_frames)[:, None], window]
    with np.errstate(invalid="ignore", divide="ignore"):
        cents = (weights * padded_cents[window]).sum(axis=1) / weights.sum(axis=1)
    cents[salience.max(axis=1) <= threshold] = 0
    f0 = 10 * 2 ** (cents / 1200)
    f0[f0 == 10] = 0
    return np.nan_to_num(f0).astype(np.float32)


class RMVPEF0Predictor(F0Predictor):
    name = "rmvpe"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.torch_device = pick_device(self.device)
        self.model = load_rmvpe(self.pretrain_dir / F0_PREDICTOR_RECORDS["rmvpe"].file, self.torch_device)
        self.mel = RMVPEMel().to(self.torch_device)

    @torch.inference_mode()
    def salience(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [1, 128, T] -> salience [1, T, 360]; time zero-padded to a multiple of 32 for the U-Net."""
        n_frames = mel.shape[-1]
        padded = nn.functional.pad(mel, (0, -n_frames % FRAME_MULTIPLE))
        return self.model(padded)[:, :n_frames]

    @torch.inference_mode()
    def f0_100hz(self, wav: np.ndarray) -> np.ndarray:
        """wav at `sampling_rate` -> raw f0 [1 + N16k // 160] at 100 frames/s, 0 = unvoiced."""
        audio = torch.from_numpy(resample_ceil(wav, self.sampling_rate, RMVPE_SR))[None].to(self.torch_device)
        salience = self.salience(self.mel(audio))[0].float().cpu().numpy()
        return salience_to_f0(salience, self.threshold)

    def compute_raw_f0(self, wav: np.ndarray, p_len: int) -> np.ndarray:
        return resize_nearest(self.f0_100hz(wav), p_len)
