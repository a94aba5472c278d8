"""Live conversion: blocks of audio in, converted blocks of the same length out, at a fixed latency.

Each call to `StreamingConverter.process` appends the block to a rolling input history and converts a
window made of `context` seconds of past input, the new block, the crossfade and search margins and
the optional lookahead, all with the So-VITS model (`Svc.convert_clip`). Of that window's output only
the stretch ending `lookahead` samples before the newest input is used: the context gives the speech
encoder and the F0 predictor the past they need, the lookahead gives them some future.

Successive outputs are joined with SOLA: the new stretch is shifted by the offset, within the search
window, where it best matches (normalised cross-correlation) the tail the previous call kept back,
and is crossfaded into that tail, so that the waveform stays continuous in phase across blocks.

Timing: output sample `j` is the converted input sample `j - latency_samples`, where
latency_samples = lookahead + crossfade + search / 2 (rounded up; the SOLA offset may move the join by up to half
the search window either way). A live audio stream adds one block of buffering and the compute time.

`inference.live` runs such a converter for realtime.py (files, or microphone to speakers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.audio import resample
from core.errors import SvcError

if TYPE_CHECKING:
    from inference.spkmix import Timeline
    from inference.svc import ConversionOptions, Svc

ENCODER_RATE = 16000          # the speech encoders' input rate
ENCODER_STEP = 320            # their frame step at that rate (20 ms)
ENCODER_EDGE = 80             # receptive field (400) minus step: samples past the last whole unit frame
ALIGN_TRIES = 12              # window starts (one hop apart) tried when aligning the encoder's frames
SILENCE_FRAME_SECONDS = 0.01  # the silence gate looks at the loudest frame of this length
STATIC_MIX_FRAMES = 1000      # grid on which a timeline's starting weights are read for a static mix
RESAMPLER_MARGIN = 1024       # model-rate samples decoded beyond what a block uses (soxr's reach: <= 600)


class StreamError(SvcError):
    """Streaming settings or options that cannot work."""


@dataclass(frozen=True)
class StreamSettings:
    """Timing of a stream; every length is in seconds, the rate is that of the blocks in and out."""

    sample_rate: int                     # rate of the blocks fed in and returned (any rate, e.g. 48000)
    context_seconds: float = 1.0         # rolling left context fed to encoder/F0 predictor with each block
    lookahead_seconds: float = 0.0       # extra right context; adds to latency
    crossfade_seconds: float = 0.05      # SOLA crossfade length
    sola_search_seconds: float = 0.012   # SOLA offset search window
    silence_threshold_db: float = -50.0  # block (with context) below this RMS -> silence, model skipped

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise StreamError(f"sample rate must be positive, got {self.sample_rate}")
        for name in ("context_seconds", "lookahead_seconds", "crossfade_seconds", "sola_search_seconds"):
            if getattr(self, name) < 0:
                raise StreamError(f"{name} must not be negative, got {getattr(self, name)}")

    def samples(self, seconds: float) -> int:
        return int(round(seconds * self.sample_rate))


@dataclass(frozen=True)
class StreamGeometry:
    """The settings' lengths in samples at the stream rate."""

    context: int
    lookahead: int
    crossfade: int
    search: int

    @classmethod
    def of(cls, settings: StreamSettings) -> StreamGeometry:
        return cls(settings.samples(settings.context_seconds), settings.samples(settings.lookahead_seconds),
                   max(settings.samples(settings.crossfade_seconds), 1), settings.samples(settings.sola_search_seconds))

    @property
    def kept(self) -> int:
        """Input history kept between calls: everything of a window except the new block."""
        return self.context + self.crossfade + self.search + self.lookahead

    @property
    def latency(self) -> int:
        return self.lookahead + self.crossfade + self.search - self.search // 2  # the nominal SOLA offset


def best_offset(reference: np.ndarray, candidates: np.ndarray, nominal: int) -> int:
    """The offset k in 0..len(candidates)-len(reference) where candidates[k:k+len(reference)] best matches
    `reference` by normalised cross-correlation; `nominal` when the reference or candidates are silent."""
    n = len(reference)
    if np.dot(reference, reference) < 1e-12 or len(candidates) <= n:
        return min(nominal, max(len(candidates) - n, 0))
    correlation = np.correlate(candidates, reference, mode="valid")
    squares = np.concatenate([[0.0], np.cumsum(candidates.astype(np.float64) ** 2)])
    energy = squares[n:] - squares[:-n]
    if energy.max() < 1e-12:
        return nominal
    return int(np.argmax(correlation / np.sqrt(energy + 1e-9)))


class SolaJoiner:
    """Joins successive output stretches: each call emits `n` samples and keeps `crossfade` back."""

    def __init__(self, crossfade: int, search: int):
        self.crossfade = crossfade
        self.search = search
        self.tail = np.zeros(crossfade, dtype=np.float32)
        self.last_offset = search // 2

    def reset(self) -> None:
        self.tail = np.zeros(self.crossfade, dtype=np.float32)
        self.last_offset = self.search // 2

    def join(self, stretch: np.ndarray, n: int) -> np.ndarray:
        """`stretch` holds `search + n + crossfade` samples; returns `n` of them joined to the kept tail."""
        offset = best_offset(self.tail, stretch[:self.crossfade + self.search], self.search // 2)
        self.last_offset = offset
        emitted = stretch[offset:offset + n].copy()
        blend = min(self.crossfade, n)
        fade_in = np.sin(0.5 * np.pi * (np.arange(blend) + 0.5) / blend).astype(np.float32) ** 2
        emitted[:blend] = emitted[:blend] * fade_in + self.tail[:blend] * (1.0 - fade_in)
        self.tail = stretch[offset + n:offset + n + self.crossfade].copy()
        return emitted


class StreamingConverter:
    """Converts a stream block by block with the So-VITS model; see the module docstring for the timing.

    `timeline` (a speaker-mix timeline) spans `timeline_seconds` of the stream and then holds its last
    weights; without `timeline_seconds` the mix is static, the timeline's weights at its start.
    """

    def __init__(self, svc: Svc, options: ConversionOptions, settings: StreamSettings,
                 timeline: Timeline | None = None, timeline_seconds: float | None = None):
        if svc.diffusion is not None:
            raise StreamError("streaming converts with the So-VITS model only: shallow diffusion (-shd/-od) is "
                              "too slow for live use; load the model without a diffusion stage")
        svc.check_options(options)
        if timeline is None:
            svc.speaker_id(options.speaker)  # an unknown speaker is refused now, not in the first block
        self.svc = svc
        self.options = options
        self.settings = settings
        self.geometry = StreamGeometry.of(settings)
        self.mix_table = _mix_table(timeline, timeline_seconds, svc.target_sample / svc.hop_length)
        self.sola = SolaJoiner(self.geometry.crossfade, self.geometry.search)
        self.silent_blocks = 0
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Output sample j is the converted input sample j - latency_samples (at settings.sample_rate)."""
        return self.geometry.latency

    def reset(self) -> None:
        """Forget the stream so far: the next block starts a new one."""
        self.history = np.zeros(self.geometry.kept, dtype=np.float32)
        self.consumed = 0
        self.sola.reset()
        self.silent_blocks = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        """One block `[N]` (any N) at settings.sample_rate -> `N` converted samples, `latency_samples` late."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        n = len(block)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        window = np.concatenate([self.history, block])
        self.history = window[n:]
        self.consumed += n
        if self._is_silent(window):
            self.silent_blocks += 1
            converted = np.zeros(len(window), dtype=np.float32)
        else:
            converted = self._convert_window(window, n + self.geometry.crossfade + self.geometry.search
                                             + self.geometry.lookahead)
        g = self.geometry
        end = len(window) - g.lookahead
        return self.sola.join(converted[end - n - g.crossfade - g.search:end], n)

    def _is_silent(self, window: np.ndarray) -> bool:
        """True when the loudest 10 ms frame of the window is below the threshold."""
        frame = max(int(SILENCE_FRAME_SECONDS * self.settings.sample_rate), 1)
        usable = len(window) // frame * frame
        frames = window[len(window) - usable:].reshape(-1, frame) if usable else window[None]
        loudest = float(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)).max())
        return 20 * math.log10(loudest + 1e-12) < self.settings.silence_threshold_db

    def _convert_window(self, window: np.ndarray, used: int) -> np.ndarray:
        """Convert the window at the model rate; the output is right-aligned with the window's newest sample.
        Only its last `used` samples are read (the decoder may skip the rest, see `Svc.convert_clip`)."""
        svc = self.svc
        wav = resample(window, self.settings.sample_rate, svc.target_sample)
        keep = len(wav) - len(wav) * self.geometry.context // (2 * len(window))
        drop = aligned_start(len(wav), svc.target_sample, svc.hop_length, keep)
        wav = wav[drop:]
        mix = self._mix_rows(window_start=self.consumed - len(window), drop=drop, n_frames=len(wav) // svc.hop_length)
        wanted = used * svc.target_sample // self.settings.sample_rate + RESAMPLER_MARGIN
        out, _ = svc.convert_clip(wav, self.options, mix, keep=(max(len(wav) - wanted, 0), len(wav)))
        out = resample(out, svc.target_sample, self.settings.sample_rate)
        if len(out) >= len(window):
            return out[len(out) - len(window):]
        return np.pad(out, (len(window) - len(out), 0))

    def _mix_rows(self, window_start: int, drop: int, n_frames: int) -> np.ndarray | None:
        if self.mix_table is None:
            return None
        start_seconds = window_start / self.settings.sample_rate + drop / self.svc.target_sample
        first = int(math.floor(start_seconds * self.svc.target_sample / self.svc.hop_length))
        rows = np.clip(np.arange(first, first + n_frames), 0, len(self.mix_table) - 1)
        return self.mix_table[rows]


def aligned_start(length: int, sample_rate: int, hop: int, keep: int) -> int:
    """How many samples to drop from the left of a window of `length` so that what is left ends on the
    newest sample, is whole model frames, and holds whole encoder frames.

    `Svc.units_f0` stretches the encoder's frames evenly over the model's frames; when the encoder's
    last frame ends well before the window does, that stretch delays the content at the window's right
    edge (where a stream takes its output) by up to one encoder frame. Trying a few starts one hop apart
    (taken from the left context, never below `keep` samples) finds one where the two grids end together.
    """
    first = length % hop

    def misfit(drop: int) -> float:
        encoder_samples = (length - drop) * ENCODER_RATE / sample_rate
        return (encoder_samples - ENCODER_EDGE) % ENCODER_STEP

    candidates = [first + k * hop for k in range(ALIGN_TRIES) if length - first - k * hop >= keep] or [first]
    return min(candidates, key=misfit)


def _mix_table(timeline: Timeline | None, seconds: float | None, frames_per_second: float) -> np.ndarray | None:
    """Per-frame speaker weights over the stream; one row (the timeline's start) for a static mix."""
    if timeline is None:
        return None
    from inference.spkmix import mix_weights

    if not seconds:
        return mix_weights(timeline, STATIC_MIX_FRAMES)[:1]
    return mix_weights(timeline, max(int(round(seconds * frames_per_second)), 1))
