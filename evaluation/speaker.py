"""Speaker similarity: cosine similarity of speaker embeddings from Resemblyzer's voice encoder.

The encoder (a 3-layer LSTM over 40-band mel frames at 16 kHz, giving a 256-value unit vector) is the one
the resemblyzer wheel ships as `resemblyzer/pretrained.pt`. The package itself is never imported (its
audio module needs webrtcvad, a compiled extension); its folder is only located, and the weights are read
with `torch.load(weights_only=True)`. Install it with `pip install --no-deps resemblyzer==0.1.4`.

An utterance's embedding is the normalised mean of the embeddings of 1.6 s windows (one every ~0.8 s) of
its non-silent frames, its level first raised to -30 dBFS if it is quieter. Two recordings of one speaker
score about 0.9 or more, two speakers about 0.35-0.7.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import MissingPretrainedError

ENCODER_SR = 16000
MEL_BANDS = 40
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s per window
PARTIAL_STEP = 77  # ~1.3 windows per second
TARGET_DBFS = -30.0
SILENT_BELOW_DB = -45.0  # frames this far below the loudest frame are dropped before embedding
HIDDEN = 256
LAYERS = 3
INSTALL = "pip install --no-deps resemblyzer==0.1.4"


def encoder_weights_path() -> Path | None:
    """`pretrained.pt` inside the installed resemblyzer package (found without importing it), or None."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pretrained.pt"
    return path if path.is_file() else None


def speaker_encoder_available() -> bool:
    return encoder_weights_path() is not None


@lru_cache(maxsize=1)
def _encoder():
    import torch
    from torch import nn

    class VoiceEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(MEL_BANDS, HIDDEN, LAYERS, batch_first=True)
            self.linear = nn.Linear(HIDDEN, HIDDEN)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            embedding = torch.relu(self.linear(hidden[-1]))
            return embedding / torch.linalg.vector_norm(embedding, dim=1, keepdim=True).clamp_min(1e-8)

    path = encoder_weights_path()
    if path is None:
        raise MissingPretrainedError(f"speaker similarity needs Resemblyzer's voice encoder weights: {INSTALL}")
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    encoder = VoiceEncoder()
    encoder.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
    return encoder.eval()


def _mel_frames(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """[frames, 40] power mel frames of the non-silent part of `audio`, its level raised to -30 dBFS."""
    import librosa

    from core.audio import resample

    audio = resample(np.asarray(audio, dtype=np.float32), sampling_rate, ENCODER_SR).astype(np.float64)
    rms = np.sqrt(np.mean(audio ** 2)) if len(audio) else 0.0
    if 0 < rms < 10 ** (TARGET_DBFS / 20):
        audio = audio * (10 ** (TARGET_DBFS / 20) / rms)
    mel = librosa.feature.melspectrogram(y=audio.astype(np.float32), sr=ENCODER_SR, n_fft=WINDOW,
                                         hop_length=HOP, n_mels=MEL_BANDS).T
    energy = 10 * np.log10(mel.sum(axis=1) + 1e-12)
    return mel[energy > energy.max() - abs(SILENT_BELOW_DB)] if len(mel) else mel


def embed(audio: np.ndarray, sampling_rate: int) -> np.ndarray | None:
    """The unit-length 256-value speaker embedding of mono `audio`; None when it holds no sound."""
    import torch

    mel = _mel_frames(audio, sampling_rate)
    if len(mel) == 0 or not np.isfinite(mel).all() or mel.max() <= 0:
        return None
    if len(mel) < PARTIAL_FRAMES:
        mel = np.pad(mel, ((0, PARTIAL_FRAMES - len(mel)), (0, 0)))
    starts = range(0, len(mel) - PARTIAL_FRAMES + 1, PARTIAL_STEP)
    windows = torch.from_numpy(np.stack([mel[s:s + PARTIAL_FRAMES] for s in starts]).astype(np.float32))
    with torch.inference_mode():
        mean = _encoder()(windows).mean(dim=0).numpy().astype(np.float64)
    return mean / max(np.linalg.norm(mean), 1e-12)


def embed_many(clips: list[tuple[np.ndarray, int]]) -> np.ndarray | None:
    """One embedding for a speaker from several recordings: the normalised mean of theirs."""
    embeddings = [e for e in (embed(audio, sr) for audio, sr in clips) if e is not None]
    if not embeddings:
        return None
    mean = np.mean(embeddings, axis=0)
    return mean / max(np.linalg.norm(mean), 1e-12)


def similarity(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Cosine similarity of two unit embeddings (1 = the same voice); None if either is missing."""
    if a is None or b is None:
        return None
    return float(np.dot(a, b))
