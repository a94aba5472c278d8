"""FCPE ('fcpe'): conv stack -> conformer layers with Performer attention -> 360-bin salience (spec §8,
formats/fcpe.json). Weights: `pretrain/fcpe.pt` with `config` (mel + model settings) and `model`.

Without `pretrain/fcpe.pt`, the FCPE checkpoint that the torchfcpe wheel ships (MIT,
`torchfcpe/assets/fcpe_c_v001.pt`, a 6-layer conv-only variant of the same network) is used when
that package is installed; torchfcpe itself is never imported (it imports torchaudio).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
from torch import nn

from f0_predictor.base import F0Predictor, pick_device, resample_ceil, resize_nearest
from core.errors import ConfigError
from core.fileio import safe_torch_load
from core.registry import F0_PREDICTOR_RECORDS, packaged_file
from f0_predictor.weights import pretrained_weights

HEADS = 8
DIM_HEAD = 64
CONV_KERNEL = 31


@dataclass(frozen=True)
class MelConfig:
    sampling_rate: int = 16000
    num_mels: int = 128
    n_fft: int = 1024
    win_size: int = 1024
    hop_size: int = 160
    fmin: float = 0.0
    fmax: float = 8000.0


@dataclass(frozen=True)
class FCPEDims:
    input_channel: int = 128
    out_dims: int = 360
    n_layers: int = 12
    n_chans: int = 512
    f0_min: float = 32.70
    f0_max: float = 1975.5
    attention: bool = True  # False: conformer convolution only (torchfcpe's conv_only)

    @property
    def n_features(self) -> int:
        """Performer random features per head: int(d * ln d)."""
        return int(DIM_HEAD * math.log(DIM_HEAD))


def read_config(config: dict[str, Any]) -> tuple[MelConfig, FCPEDims]:
    """The checkpoint's `config` -> (mel settings, network sizes); unsupported variants are refused."""
    mel, model = config["mel"], config["model"]
    for flag in ("use_siren", "use_full"):
        if model.get(flag):
            raise ConfigError(f"fcpe.pt: model.{flag}=True is not supported (so-vits-svc uses False)")
    mel_config = MelConfig(**{name: mel[name] for name in MelConfig.__dataclass_fields__})
    dims = FCPEDims(**{name: model[name] for name in FCPEDims.__dataclass_fields__ if name != "attention"})
    return mel_config, dims


def read_torchfcpe_checkpoint(checkpoint: dict[str, Any]) -> tuple[dict[str, torch.Tensor], MelConfig, FCPEDims]:
    """torchfcpe's format (`config_dict` + `model` of CFNaiveMelPE, conv-only) -> our state dict and sizes."""
    mel, model = checkpoint["config_dict"]["mel"], checkpoint["config_dict"]["model"]
    if not model.get("conv_only") or model.get("use_harmonic_emb"):
        raise ConfigError("torchfcpe checkpoint: only the conv-only CFNaiveMelPE without harmonic embedding "
                          "is supported")
    mel_config = MelConfig(sampling_rate=mel["sr"], num_mels=mel["num_mels"], n_fft=mel["n_fft"],
                           win_size=mel["win_size"], hop_size=mel["hop_size"], fmin=mel["fmin"], fmax=mel["fmax"])
    dims = FCPEDims(input_channel=mel["num_mels"], out_dims=model["out_dims"], n_layers=model["n_layers"],
                    n_chans=model["hidden_dims"], f0_min=model["f0_min"], f0_max=model["f0_max"], attention=False)
    renames = (("input_stack.", "stack."), ("net.encoder_layers.", "decoder._layers."), ("output_proj.", "dense_out."))
    state = {}
    for key, value in checkpoint["model"].items():
        for old, new in renames:
            key = new + key[len(old):] if key.startswith(old) else key
        if key != "gaussian_blurred_cent_mask":  # a training-only constant
            state[key] = value
    return state, mel_config, dims


class FCPEMel(nn.Module):
    """Audio at mel.sampling_rate [B, N] -> natural-log Slaney mel [B, N // hop, num_mels]
    (reflect padding (win - hop) / 2 per side, uncentred STFT, magnitude with a 1e-9 floor)."""

    def __init__(self, mel: MelConfig):
        super().__init__()
        self.config = mel
        basis = librosa.filters.mel(sr=mel.sampling_rate, n_fft=mel.n_fft, n_mels=mel.num_mels,
                                    fmin=mel.fmin, fmax=mel.fmax)
        self.register_buffer("basis", torch.from_numpy(basis), persistent=False)  # [n_mels, n_fft // 2 + 1]
        self.register_buffer("window", torch.hann_window(mel.win_size), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        c = self.config
        left, right = (c.win_size - c.hop_size) // 2, (c.win_size - c.hop_size + 1) // 2
        mode = "reflect" if audio.shape[-1] > max(left, right) else "constant"
        padded = nn.functional.pad(audio[:, None], (left, right), mode=mode)[:, 0]
        if padded.shape[-1] < c.n_fft:
            padded = nn.functional.pad(padded, (0, c.n_fft - padded.shape[-1]))
        spec = torch.stft(padded, c.n_fft, c.hop_size, c.win_size, self.window, center=False, return_complex=True)
        magnitude = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)  # [B, bins, T]
        return torch.log(torch.clamp(self.basis @ magnitude, min=1e-5)).transpose(1, 2)


def match_reference_frames(mel: torch.Tensor, n_frames: int) -> torch.Tensor:
    """The reference's frame-count quirk: n_frames = (input length at the ORIGINAL rate) // hop + 1;
    a shorter mel gets ONE copy of its last frame appended, a longer one is cut to n_frames."""
    if n_frames > mel.shape[1]:
        return torch.cat([mel, mel[:, -1:]], dim=1)
    return mel[:, :n_frames]


class PerformerAttention(nn.Module):
    """Non-causal FAVOR+ softmax-kernel attention, 8 heads of 64, with the stored random projection."""

    def __init__(self, dim: int, n_features: int):
        super().__init__()
        inner = HEADS * DIM_HEAD
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)
        self.fast_attention = nn.Module()
        self.fast_attention.register_buffer("projection_matrix", torch.zeros(n_features, DIM_HEAD))

    def features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """x [B, H, T, 64] -> positive random features [B, H, T, n_features]."""
        projection = self.fast_attention.projection_matrix
        scale = DIM_HEAD ** -0.25
        dash = (scale * x) @ projection.T
        diag = (x ** 2).sum(dim=-1, keepdim=True) * scale ** 2 / 2
        ratio = projection.shape[0] ** -0.5
        if is_query:
            return ratio * (torch.exp(dash - diag - dash.amax(dim=-1, keepdim=True)) + 1e-4)
        return ratio * torch.exp(dash - diag + 1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (proj(x).view(batch, length, HEADS, DIM_HEAD).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))  # [B, H, T, 64]
        q, k = self.features(q, is_query=True), self.features(k, is_query=False)
        normaliser = 1.0 / (q @ k.sum(dim=-2).unsqueeze(-1) + 1e-8)  # [B, H, T, 1]
        out = (q @ (k.transpose(-1, -2) @ v)) * normaliser  # [B, H, T, 64]
        return self.to_out(out.transpose(1, 2).reshape(batch, length, HEADS * DIM_HEAD))


class Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class DepthwiseConv(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.padding = (kernel // 2, kernel // 2)  # odd kernel: 'same' length
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, self.padding))


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class ConformerConv(nn.Module):
    """LayerNorm -> pointwise conv to 4C -> GLU -> depthwise conv k31 -> Swish -> pointwise conv to C."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), Transpose(), nn.Conv1d(dim, 4 * dim, 1), nn.GLU(dim=1),
                                 DepthwiseConv(2 * dim, CONV_KERNEL), Swish(), nn.Conv1d(2 * dim, dim, 1),
                                 Transpose(), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PCmerLayer(nn.Module):
    def __init__(self, dims: FCPEDims):
        super().__init__()
        self.conformer = ConformerConv(dims.n_chans)
        self.norm = nn.LayerNorm(dims.n_chans)  # stored even when unused (no attention)
        self.attn = PerformerAttention(dims.n_chans, dims.n_features) if dims.attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.norm(x))
        return x + self.conformer(x)


class PCmer(nn.Module):
    def __init__(self, dims: FCPEDims):
        super().__init__()
        self._layers = nn.ModuleList([PCmerLayer(dims) for _ in range(dims.n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers:
            x = layer(x)
        return x


class WeightNormLinear(nn.Module):
    """Linear layer stored as legacy weight norm: weight = weight_g * weight_v / |weight_v| per output row."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(n_out, 1))
        self.weight_v = nn.Parameter(torch.zeros(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return nn.functional.linear(x, weight, self.bias)


class FCPE(nn.Module):
    """log-mel [B, T, 128] -> salience [B, T, 360] in (0, 1)."""

    def __init__(self, dims: FCPEDims = FCPEDims()):
        super().__init__()
        c = dims.n_chans
        self.stack = nn.Sequential(nn.Conv1d(dims.input_channel, c, 3, padding=1), nn.GroupNorm(4, c),
                                   nn.LeakyReLU(), nn.Conv1d(c, c, 3, padding=1))
        self.decoder = PCmer(dims)
        self.norm = nn.LayerNorm(c)
        self.dense_out = WeightNormLinear(c, dims.out_dims)
        low, high = (1200 * math.log2(f / 10) for f in (dims.f0_min, dims.f0_max))
        self.register_buffer("cent_table", torch.linspace(low, high, dims.out_dims))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.stack(mel.transpose(1, 2)).transpose(1, 2)  # [B, T, C]
        return torch.sigmoid(self.dense_out(self.norm(self.decoder(x))))


def salience_to_f0(salience: torch.Tensor, cent_table: torch.Tensor, threshold: float) -> torch.Tensor:
    """salience [B, T, 360] -> f0 [B, T, 1] Hz: salience-weighted mean of the cent table over the 9 bins
    argmax-4 .. argmax+4 (indices clamped into range, so edge bins repeat); 0 where the peak salience
    is <= threshold."""
    peak, center = salience.max(dim=-1, keepdim=True)  # [B, T, 1]
    index = (center - 4 + torch.arange(9, device=salience.device)).clamp(0, salience.shape[-1] - 1)
    weights = torch.gather(salience, -1, index)
    cents = (cent_table[index] * weights).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True)
    f0 = 10 * 2 ** (cents / 1200)
    return torch.nan_to_num(torch.where(peak > threshold, f0, torch.zeros_like(f0)))


def torchfcpe_weights_path() -> Path | None:
    """`assets/fcpe_c_v001.pt` inside an installed torchfcpe package (found without importing it)."""
    return packaged_file(F0_PREDICTOR_RECORDS["fcpe"].packaged)


def fcpe_weights_path(pretrain_dir: Path) -> Path:
    """pretrain/fcpe.pt; without it torchfcpe's bundled checkpoint; without both, the usual clear error."""
    return pretrained_weights(F0_PREDICTOR_RECORDS["fcpe"], pretrain_dir, find_packaged=torchfcpe_weights_path)


def load_fcpe(path: Path, device: torch.device) -> tuple[FCPE, MelConfig]:
    """Either checkpoint format -> (model in eval mode on `device`, its mel settings)."""
    checkpoint = safe_torch_load(path, map_location="cpu")
    if "config_dict" in checkpoint:
        state, mel_config, dims = read_torchfcpe_checkpoint(checkpoint)
    else:
        state = checkpoint["model"]
        mel_config, dims = read_config(checkpoint["config"])
    model = FCPE(dims)
    model.load_state_dict(state, strict=True)
    return model.float().eval().to(device), mel_config


class FCPEF0Predictor(F0Predictor):
    name = "fcpe"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.torch_device = pick_device(self.device)
        self.model, mel_config = load_fcpe(fcpe_weights_path(self.pretrain_dir), self.torch_device)
        self.mel = FCPEMel(mel_config).to(self.torch_device)

    @torch.inference_mode()
    def log_mel(self, wav: np.ndarray) -> torch.Tensor:
        """wav at `sampling_rate` -> [1, T, num_mels], T = frames of the resampled audio + 1 (quirk)."""
        rate, hop = self.mel.config.sampling_rate, self.mel.config.hop_size
        audio = torch.from_numpy(resample_ceil(wav, self.sampling_rate, rate))[None].to(self.torch_device)
        return match_reference_frames(self.mel(audio), len(wav) // hop + 1)

    @torch.inference_mode()
    def f0_frames(self, wav: np.ndarray) -> np.ndarray:
        """wav -> raw f0 [T] at the mel frame rate, 0 = unvoiced."""
        salience = self.model(self.log_mel(wav))
        return salience_to_f0(salience, self.model.cent_table, self.threshold)[0, :, 0].float().cpu().numpy()

    def compute_raw_f0(self, wav: np.ndarray, p_len: int) -> np.ndarray:
        return resize_nearest(self.f0_frames(wav), p_len)
