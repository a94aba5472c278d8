"""Whisper PPG: the audio encoder of an OpenAI Whisper checkpoint as a content encoder (spec §7).

Reads openai-whisper's `{dims, model_state_dict}` files of any size (tiny ... large-v2) and
encoder-only files; only the `encoder.*` tensors are used. The model runs in float32.

Input longer than 30 s is not truncated (4.1 does, §19.27): it is encoded in 30 s windows that
start every 25 s, and each pair of neighbouring windows is joined in the middle of their 5 s
overlap, so every output frame has at least 2.5 s of context on both sides of a join. Input of
30 s or less takes exactly 4.1's path (one zero-padded 30 s window).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from core.dsp import hann_window, mel_filterbank
from core.errors import SvcError
from core.fileio import safe_torch_load
from core.pretrained import require_pretrained
from vencoder.encoder import SpeechEncoder

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE        # 480000
SAMPLES_PER_FRAME = 2 * HOP_LENGTH                   # 320: conv2 has stride 2
WINDOW_FRAMES = WINDOW_SAMPLES // SAMPLES_PER_FRAME  # 1500
WINDOW_HOP_FRAMES = 1250                             # windows start every 25 s
HEAD_DIM = 64                                        # every OpenAI Whisper size uses 64-wide heads


@dataclass(frozen=True)
class AudioEncoderDims:
    n_mels: int         # mel bins of the input (80; 128 for large-v3)
    n_audio_ctx: int    # positional table length (1500 = 30 s)
    n_audio_state: int  # width D, the feature dimension
    n_audio_head: int   # attention heads
    n_audio_layer: int  # residual attention blocks


def log_mel_spectrogram(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel: `[N]` at 16 kHz -> `[n_mels, N // 160]`.

    Centred STFT (reflect padding, last frame dropped), power spectrum, librosa's Slaney mel
    filters (the values OpenAI ships in mel_filters.npz), log10, floor at max - 8, then (x + 4) / 4.
    The max is taken over the whole input, so callers pass exactly one 30 s window.
    """
    window = hann_window(N_FFT, audio.dtype, str(audio.device))
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)                   # [201, N // 160 + 1]
    power = stft[..., :-1].abs() ** 2                         # [201, N // 160]
    filters = mel_filterbank(SAMPLE_RATE, N_FFT, n_mels, 0.0, None, audio.dtype, str(audio.device))
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()  # [n_mels, N // 160]
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `[B, T, D]` -> `[B, T, D]`, full (unmasked) self-attention."""
        B, T, D = x.shape
        q, k, v = (proj(x).view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # [B, H, T, D/H]
                   for proj in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, D/H], scale 1/sqrt(D/H)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: AudioEncoderDims):
        super().__init__()
        self.dims = dims
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: `[B, n_mels, 2 * T]` -> `[B, T, D]` with T <= n_audio_ctx."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T, D]
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """`[length, channels]`: sines then cosines (not interleaved) at geometric timescales."""
    half = channels // 2
    inv_timescales = torch.exp(-torch.arange(half) * (torch.log(torch.tensor(max_timescale)) / (half - 1)))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


def load_audio_encoder(path: str | Path) -> AudioEncoder:
    """Build the encoder of a Whisper checkpoint (full or encoder-only) in float32 on the CPU."""
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict):
        raise SvcError(f"{path} is not a Whisper checkpoint (expected a dict with 'model_state_dict')")
    if checkpoint.get("random_weights"):
        logger.warning(f"{path} holds RANDOM weights (the demo's last-resort placeholder): converted voices "
                       "will not sound like the target speaker")
    state = checkpoint.get("model_state_dict", checkpoint)
    prefix = "encoder."
    encoder_state = {k[len(prefix):]: v for k, v in state.items()
                     if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)}
    if not encoder_state:
        raise SvcError(f"{path} holds no 'encoder.*' tensors; it is not an OpenAI Whisper checkpoint")
    dims = encoder_dims(checkpoint.get("dims"), encoder_state, path)
    encoder = AudioEncoder(dims)
    encoder_state = {k: v.float() for k, v in encoder_state.items()}
    encoder_state.setdefault("positional_embedding", encoder.positional_embedding)
    try:
        encoder.load_state_dict(encoder_state)
    except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
        detail = str(error).strip().splitlines()[-1].strip()
        raise SvcError(f"{path} does not match a Whisper encoder with dims {dims}: {detail}") from None
    return encoder.eval()


def encoder_dims(stored: object, encoder_state: dict[str, torch.Tensor], path: str | Path) -> AudioEncoderDims:
    """Dims from the file's `dims` where present, else from tensor shapes (heads: width // 64)."""
    stored = stored if isinstance(stored, dict) else {}
    try:
        n_state, n_mels, _ = encoder_state["conv1.weight"].shape
    except (KeyError, ValueError):
        raise SvcError(f"{path}: the Whisper encoder has no usable 'encoder.conv1.weight'") from None
    blocks = {int(k.split(".")[1]) for k in encoder_state if k.startswith("blocks.")}
    pos = encoder_state.get("positional_embedding")
    inferred = {
        "n_mels": n_mels,
        "n_audio_ctx": pos.shape[0] if pos is not None else WINDOW_FRAMES,
        "n_audio_state": n_state,
        "n_audio_head": max(1, n_state // HEAD_DIM),
        "n_audio_layer": len(blocks),
    }
    values = {f.name: int(stored.get(f.name, inferred[f.name])) for f in fields(AudioEncoderDims)}
    if (values["n_audio_state"] != n_state or values["n_audio_state"] % values["n_audio_head"]
            or values["n_audio_ctx"] < WINDOW_FRAMES):
        raise SvcError(f"{path}: stored dims {values} do not fit its encoder tensors (width {n_state})")
    return AudioEncoderDims(**values)


def window_starts(n_frames: int) -> list[int]:
    """First frame of each 30 s window needed to cover `n_frames` output frames."""
    starts = [0]
    while starts[-1] + WINDOW_FRAMES < n_frames:
        starts.append(starts[-1] + WINDOW_HOP_FRAMES)
    return starts


class WhisperPPG(SpeechEncoder):
    """whisper-ppg (medium.pt, 1024-d), -large (large-v2.pt, 1280), -small (768), -base (512)."""

    def __init__(self, name: str, path: Path, device: torch.device):
        super().__init__(name, path, device)
        require_pretrained(self.path, f"speech encoder {name}")
        self.model = load_audio_encoder(self.path).to(self.device)
        self.dims = self.model.dims
        self.hidden_dim = self.dims.n_audio_state

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        """wav16k `[N]` -> `[1, D, N // 320]` (any length; see the module docstring for > 30 s)."""
        n_frames = wav16k.shape[-1] // SAMPLES_PER_FRAME
        starts = window_starts(n_frames)
        pieces = []
        for i, start in enumerate(starts):
            lo = 0 if i == 0 else (start + starts[i - 1] + WINDOW_FRAMES) // 2
            hi = n_frames if i == len(starts) - 1 else (starts[i + 1] + start + WINDOW_FRAMES) // 2
            features = self.encode_window(wav16k[start * SAMPLES_PER_FRAME:][:WINDOW_SAMPLES])  # [1500, D]
            pieces.append(features[lo - start:hi - start])
        return torch.cat(pieces, dim=0).T.unsqueeze(0)  # [1, D, n_frames]

    def encode_window(self, wav16k: torch.Tensor) -> torch.Tensor:
        """Up to 30 s `[n]`, zero-padded at the end to 30 s -> `[1500, D]`."""
        padded = F.pad(wav16k, (0, WINDOW_SAMPLES - wav16k.shape[-1]))
        mel = log_mel_spectrogram(padded, self.dims.n_mels)  # [n_mels, 3000]
        return self.model(mel.unsqueeze(0))[0]
