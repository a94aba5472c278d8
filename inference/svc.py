"""Conversion: load a trained model once, convert many inputs (spec §13).

`Svc.convert_clip` converts one short clip; `Svc.convert` handles a whole recording the way 4.1's
`slice_inference` does (silence slicing, padding, forced clips with crossfade, speaker-mix timelines).

Memory: the text encoder and the speech encoder attend over every frame of what they are given, so their
memory grows with the square of a slice's length (a 12-minute slice without silence asks for ~31 GB).
Slices longer than `max_slice_seconds` (default 30 s) are therefore cut into equal clips of at most that
length, each later one starting `AUTO_CROSSFADE_SECONDS` early and crossfaded like `-cl`/`-lg` clips.
30 s keeps the attention buffers of the default model at a few hundred MB on any input, and is long
enough that joins are rare and every clip has ample context; shorter slices are converted untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from inference.cleanup import DEFAULT_CLEANUP, clean_output, context_samples, settle_samples
from inference.loudness import mix_loudness
from inference.precision import ORT_PRECISIONS, resolve_precision
from inference.preflight import (NO_F0_DECODER_IN_CONFIG, NO_F0_DECODER_WEIGHTS, auto_f0_refusal,
                                 check_input_length)
from inference.speakers import speaker_id
from inference.spkmix import Timeline, mix_weights
from core.audio import fit_length, resample
from core.checkpoint import read_state_dict
from core.cli_types import check_device
from core.config import load_model_config
from core.dsp import repeat_expand_2d, volume
from core.errors import ConfigError, SvcError
from core.slicer import Segment, Slicer
from models import INFER_SEED

ENCODER_SR = 16000
DEFAULT_MAX_SLICE_SECONDS = 30.0  # longer slices are cut into crossfaded clips (see the module docstring)
AUTO_CROSSFADE_SECONDS = 1.0      # overlap of those clips when -lg does not set one
PROGRESS_MIN_SECONDS = 10.0       # inputs longer than this show a progress bar


@dataclass(frozen=True)
class ConversionOptions:
    """Per-call controls; the names follow inference_main.py's long flags."""

    speaker: str | int = 0               # speaker name or id (ignored with a speaker-mix timeline)
    trans: float = 0.0                   # pitch shift in semitones
    cluster_infer_ratio: float = 0.0     # 0..1 share of k-means centres / retrieved features
    auto_predict_f0: bool = False        # use the model's F0 decoder (speech, not singing)
    noice_scale: float = 0.4             # prior noise scale (4.1's spelling)
    f0_predictor: str = "pm"
    f0_filter_threshold: float = 0.05    # confidence threshold for crepe / rmvpe / fcpe
    enhancer_adaptive_key: float = 0.0
    loudness_envelope_adjustment: float = 1.0
    k_step: int = 100                    # shallow-diffusion depth
    second_encoding: bool = False
    slice_db: float = -40.0
    pad_seconds: float = 0.5
    clip_seconds: float = 0.0
    linear_gradient: float = 0.0         # crossfade seconds between forced clips
    linear_gradient_retain: float = 0.75
    max_slice_seconds: float = DEFAULT_MAX_SLICE_SECONDS  # 0: never cut a slice automatically
    seed: int = INFER_SEED               # seed of the model's random draws (prior noise, source phases)
    cleanup: bool = True                 # output stage (inference.cleanup); False: 4.1's output (with fp32)
    f0_repair: bool = False              # fold octave errors back, remove voicing flicker (f0_predictor.repair)


@dataclass
class ClipInputs:
    """The conditioning of one clip, all on the model's device."""

    units: torch.Tensor  # [1, D, T] content features
    f0: torch.Tensor     # [1, T] Hz, pitch-shifted, unvoiced frames interpolated
    uv: torch.Tensor     # [1, T] 1 voiced / 0 unvoiced
    g: torch.Tensor      # speaker id [[sid]] (long) or per-frame mix weights [T, S] (float)
    vol: torch.Tensor    # [1, T] source frame RMS


class Svc:
    """A loaded So-VITS model with its speech encoder, optional cluster model, enhancer and diffusion."""

    def __init__(self, model_path: str | Path, config_path: str | Path, device: str | torch.device | None = None,
                 cluster_model_path: str | Path | None = None, feature_retrieval: bool = False,
                 enhance: bool = False, enhancer_path: str | Path = "pretrain/nsf_hifigan/model",
                 pretrain_dir: str | Path = "pretrain", diffusion=None, precision: str = "fp32"):
        """`precision`: see inference.precision (fp32 = 4.1's computation; auto = the fastest path that
        meets the quality bound on this machine)."""
        from models import generator_for_weights
        from vencoder.ort_encoder import speech_encoder

        if isinstance(device, str):
            check_device(device)
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = resolve_precision(precision, self.device)
        self.config = load_model_config(config_path)
        self.target_sample = int(self.config.data.sampling_rate)
        self.hop_length = int(self.config.data.hop_length)
        self.spk2id: dict[str, int] = {str(k): int(v) for k, v in self.config.spk.items()}
        self.unit_interpolate_mode = self.config.data.unit_interpolate_mode
        self.vol_embedding = bool(self.config.model.vol_embedding)
        self.pretrain_dir = Path(pretrain_dir)

        self.net_g, report = generator_for_weights(self.config, read_state_dict(model_path),
                                                   optional_prefixes=("enc_q.", "f0_decoder."))
        self.can_predict_f0 = (bool(self.config.model.get("use_automatic_f0_prediction", True))
                               and "f0_decoder." not in report.skipped_prefixes)
        self.net_g.remove_weight_norm()
        self.net_g.eval().to(self.device)
        self.encoder = speech_encoder(self.config.model.speech_encoder, self.device, self.pretrain_dir,
                                      onnx=self.precision in ORT_PRECISIONS)
        self.cluster = _load_cluster(cluster_model_path, feature_retrieval)
        self.feature_retrieval = feature_retrieval and self.cluster is not None
        self.enhancer = None
        if enhance:
            from inference.enhancer import Enhancer
            self.enhancer = Enhancer(enhancer_path, self.device)
        self.diffusion = diffusion
        self._f0_predictors: dict[tuple[str, float], object] = {}
        if self.precision in ORT_PRECISIONS:
            self._use_ort_decoder()

    def _use_ort_decoder(self) -> None:
        """Run the decoder body on ONNX Runtime; a decoder that does not export falls back to fp32 with a warning."""
        from vdecoder.ort_body import build_ort_body
        try:
            self.net_g.dec.fast_body = build_ort_body(self.net_g.dec, self.precision, self._decoder_calibration)
            self.net_g.dec.onnx_mode = True  # the source's phase per frame: the same draws, 0.5 s less per minute
        except Exception as error:  # noqa: BLE001 - any export or quantiser failure: the exact path still works
            logger.warning(f"--precision {self.precision}: the decoder could not be prepared for ONNX Runtime "
                           f"({type(error).__name__}: {error}); converting in fp32")
            self.precision = "fp32"

    def _autocast(self):
        """bfloat16 autocast for the bf16 precision, a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _decoder_calibration(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The decoder body's inputs while converting a built-in sung tone (units from this model's speech
        encoder, its known f0) for up to two speakers: the activation ranges of the int8 decoder."""
        seconds = 3.0  # the quantiser holds every intermediate tensor of every item: ~1 GB per second here
        wav, f0 = calibration_tone(seconds, self.target_sample, self.hop_length)
        units = self.encoder(torch.from_numpy(resample(wav, self.target_sample, ENCODER_SR)))[0]
        units = repeat_expand_2d(units, len(f0), self.unit_interpolate_mode)[None].float()
        f0_t = torch.from_numpy(f0)[None].to(self.device)
        uv = (f0_t > 0).float()
        f0_t = torch.where(f0_t > 0, f0_t, torch.full_like(f0_t, 110.0))
        vol = volume(torch.from_numpy(wav)[None].to(self.device), self.hop_length)[:, :len(f0)]
        recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        dec = self.net_g.dec

        def record(x, excitation, g):
            recorded.append((x.clone(), excitation.clone(), g.clone()))
            return dec.body(x, excitation, g)

        previous, dec.fast_body = dec.fast_body, record
        try:
            with torch.inference_mode():
                for sid in sorted(set(self.spk2id.values()))[:2] or [0]:
                    self.net_g.infer(units.to(self.device), f0_t, uv, g=torch.tensor([[sid]], device=self.device),
                                     noice_scale=0.4, vol=vol if self.vol_embedding else None)
        finally:
            dec.fast_body = previous
        return recorded

    # ----- one clip -----------------------------------------------------------------------------

    def f0_predictor(self, name: str, threshold: float):
        from f0_predictor import get_f0_predictor
        key = (name, threshold)
        if key not in self._f0_predictors:
            self._f0_predictors = {key: get_f0_predictor(name, self.hop_length, self.target_sample,
                                                         str(self.device), threshold, self.pretrain_dir)}
        return self._f0_predictors[key]

    def speaker_id(self, speaker: str | int) -> int:
        return speaker_id(self.spk2id, speaker)

    def check_length(self, n_samples: int, sr: int, what: str) -> None:
        """AudioError naming `what` when the audio is shorter than one frame of this model."""
        check_input_length(n_samples, sr, self.target_sample, self.hop_length, what)

    def check_options(self, opts: ConversionOptions) -> None:
        """Refuse options this model cannot honour, before any work is done."""
        if opts.auto_predict_f0 and not self.can_predict_f0:
            from_config = not self.config.model.get("use_automatic_f0_prediction", True)
            raise auto_f0_refusal(NO_F0_DECODER_IN_CONFIG if from_config else NO_F0_DECODER_WEIGHTS)

    def _f0_repair(self, opts: ConversionOptions) -> Callable[[np.ndarray], np.ndarray] | None:
        """The raw-track repair for --f0_repair on this model's frame grid, else None (4.1's f0)."""
        if not opts.f0_repair:
            return None
        from f0_predictor.repair import repair_raw_f0

        frame_seconds = self.hop_length / self.target_sample
        return lambda raw: repair_raw_f0(raw, frame_seconds)

    def predicted_f0(self, wav: np.ndarray, opts: ConversionOptions) -> tuple[np.ndarray, np.ndarray]:
        """wav `[N]` at the model rate -> the F0 predictor's (f0 `[T]` shifted by `opts.trans`, uv `[T]`)."""
        predictor = self.f0_predictor(opts.f0_predictor, opts.f0_filter_threshold)
        f0, uv = predictor.compute_f0_uv(wav, repair=self._f0_repair(opts))
        return f0 * 2 ** (opts.trans / 12), uv

    def units_f0(self, wav: np.ndarray, opts: ConversionOptions, sid: int | None, pitch: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """wav `[N]` at the model rate -> content `[1, D, T]`, f0 `[1, T]` (shifted), uv `[1, T]`.

        `pitch` `[T', 2]` (filled f0 Hz, uv) replaces the F0 predictor and the shift: it is used as is."""
        if pitch is None:
            f0, uv = self.predicted_f0(wav, opts)
        else:
            rows = _fit_rows(pitch, len(wav) // self.hop_length)
            f0, uv = rows[:, 0].astype(np.float64), rows[:, 1].astype(np.float32)
        f0 = torch.from_numpy(f0).float()[None].to(self.device)
        uv = torch.from_numpy(uv).float()[None].to(self.device)
        wav16k = torch.from_numpy(resample(wav, self.target_sample, ENCODER_SR))
        with self._autocast():
            units = self.encoder(wav16k)[0].float()                                # [D, T_enc]
        units = repeat_expand_2d(units, f0.shape[1], self.unit_interpolate_mode)  # [D, T]
        if opts.cluster_infer_ratio > 0 and self.cluster is not None and sid is not None:
            units = self._cluster_mix(units, sid, opts.cluster_infer_ratio)
        return units[None].float(), f0, uv

    def _cluster_mix(self, units: torch.Tensor, sid: int, ratio: float) -> torch.Tensor:
        if self.feature_retrieval:
            from cluster.feature_index import retrieval_mix
            if sid not in self.cluster:
                raise ConfigError(f"the feature index has no entry for speaker id {sid}")
            return retrieval_mix(units.T, self.cluster[sid], ratio).T
        from cluster.codebook import kmeans_mix
        name = next(n for n, i in self.spk2id.items() if i == sid)
        if name not in self.cluster:
            raise ConfigError(f"the k-means model has no codebook for speaker '{name}'")
        return kmeans_mix(units.T, self.cluster[name].to(units.device), ratio).T

    def clip_inputs(self, wav: np.ndarray, opts: ConversionOptions, mix: np.ndarray | None,
                    pitch: np.ndarray | None = None) -> ClipInputs:
        """Everything the synthesis of one clip `[N]` needs; `mix` is per-frame speaker weights `[T', S]`,
        `pitch` the clip's given (f0, uv) rows `[T', 2]` (None: the F0 predictor's)."""
        sid = None if mix is not None else self.speaker_id(opts.speaker)
        units, f0, uv = self.units_f0(wav, opts, sid, pitch)
        n_frames = f0.shape[1]
        if mix is not None:
            g = torch.from_numpy(_fit_rows(mix, n_frames)).float().to(self.device)
        else:
            g = torch.tensor([[sid]], device=self.device)
        vol = volume(torch.from_numpy(wav)[None].to(self.device), self.hop_length)[:, :n_frames]
        return ClipInputs(units, f0, uv, g, vol)

    def synthesize(self, x: ClipInputs, wav: np.ndarray, opts: ConversionOptions,
                   frames: tuple[int, int] | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """So-VITS (and shallow diffusion): -> (audio `[T * hop]`, the f0 used `[1, T]`). `frames` = (start,
        stop): only those frames' audio is wanted (the rest may come back as 0; see `_decodes_window`)."""
        if not self._decodes_window(opts):
            frames = None
        with torch.inference_mode(), self._autocast():
            audio, f0 = self.net_g.infer(x.units, x.f0, x.uv, g=x.g, noice_scale=opts.noice_scale,
                                         predict_f0=opts.auto_predict_f0, seed=opts.seed,
                                         vol=x.vol if self.vol_embedding else None, frames=frames)
        audio = audio[0, 0].float().cpu().numpy()
        if self.diffusion is not None:
            audio = self.diffusion.refine(self, audio, x.units, f0, x.vol if self.vol_embedding else None, x.g, opts)
        return audio, f0

    def _decodes_window(self, opts: ConversionOptions) -> bool:
        """Whether the decoder may skip the padding around a slice: on the ONNX Runtime paths (fp32 stays 4.1's
        computation), where nothing after the decoder reads the padded audio (enhancer, diffusion, loudness
        mix) beyond the output stage's reach (`cleanup_margin`). The kept samples are the same up to float
        rounding; a padded 5 s slice decodes 0.6 s less (0.3 s with the output stage)."""
        return (self.precision in ORT_PRECISIONS and self.enhancer is None and self.diffusion is None
                and opts.loudness_envelope_adjustment == 1)

    def convert_clip(self, wav: np.ndarray, opts: ConversionOptions, mix: np.ndarray | None = None,
                     keep: tuple[int, int] | None = None, pitch: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Convert one clip `[N]` at the model rate. `mix`: per-frame speaker weights `[T, S]` (or None);
        `pitch`: per-frame (f0, uv) `[T, 2]` used instead of the F0 predictor (or None).
        `keep` = (start, stop) samples: the caller keeps only those (the audio elsewhere may be 0). The output
        stage (`opts.cleanup`) filters the whole clip, so padding around `keep` keeps its edges out of them; where
        less than its settling time follows `keep` (a stream's newest block), its high-pass runs forwards only.

        Returns (audio `[T * hop]` float32 at the model rate, number of frames T).
        """
        wav = np.asarray(wav, dtype=np.float32)
        if len(wav) < self.hop_length:
            return np.zeros(len(wav), dtype=np.float32), 0
        inputs = self.clip_inputs(wav, opts, mix, pitch)
        frames = self._decoded_frames(keep, inputs.f0.shape[1], opts)
        audio, f0 = self.synthesize(inputs, wav, opts, frames)
        if self.enhancer is not None:
            audio = self.enhancer.enhance(audio, self.target_sample, f0[0].cpu().numpy(), self.hop_length,
                                          opts.enhancer_adaptive_key)
        if opts.loudness_envelope_adjustment != 1:
            audio = mix_loudness(wav, self.target_sample, audio, self.target_sample,
                                 opts.loudness_envelope_adjustment)
        if opts.cleanup:
            audio = self._clean(audio, inputs.vol, frames, causal=self._ends_unpadded(keep, len(audio)))
        return audio.astype(np.float32), inputs.f0.shape[1]

    def cleanup_margin(self) -> int:
        """Frames the output stage reads beyond the samples it returns (the high-pass settling, the gate)."""
        return -(-context_samples(self.target_sample, DEFAULT_CLEANUP) // self.hop_length)

    def _decoded_frames(self, keep: tuple[int, int] | None, n_frames: int, opts: ConversionOptions
                        ) -> tuple[int, int] | None:
        """The frames to decode when only `keep` samples are wanted (None: all); with the output stage on,
        widened by its margin, so that the kept samples are filtered as in a whole decode."""
        if keep is None or not self._decodes_window(opts):
            return None
        margin = self.cleanup_margin() if opts.cleanup else 0
        start = max(keep[0] // self.hop_length - margin, 0)
        stop = -(-keep[1] // self.hop_length) + margin
        return min(start, n_frames), min(stop, n_frames)

    def _ends_unpadded(self, keep: tuple[int, int] | None, n_samples: int) -> bool:
        """Whether the kept samples end too close to the clip's end for a zero-phase high-pass (a stream's
        newest block): less than its settling time follows them."""
        return keep is not None and n_samples - keep[1] < settle_samples(self.target_sample, DEFAULT_CLEANUP)

    def _clean(self, audio: np.ndarray, vol: torch.Tensor, frames: tuple[int, int] | None,
               causal: bool) -> np.ndarray:
        """The output stage on a clip, or only on the decoded `frames` when the rest was not decoded (0)."""
        frame_rms = vol[0].float().cpu().numpy()
        if frames is None:
            return clean_output(audio, frame_rms, self.hop_length, self.target_sample, causal=causal)
        start, stop = frames[0] * self.hop_length, frames[1] * self.hop_length
        cleaned = np.zeros(len(audio), dtype=np.float32)
        cleaned[start:stop] = clean_output(audio[start:stop], frame_rms[frames[0]:frames[1]], self.hop_length,
                                           self.target_sample, causal=causal)
        return cleaned

    # ----- a whole recording --------------------------------------------------------------------

    def convert(self, audio: np.ndarray, sr: int, opts: ConversionOptions,
                timeline: Timeline | None = None, label: str = "",
                pitch: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Convert a whole recording `[N]` at `sr`; returns float32 audio at the model rate, same duration.

        Inputs longer than PROGRESS_MIN_SECONDS show a progress bar (seconds of audio done) named `label`.
        `pitch` = (f0 Hz `[T]`, voiced `[T]`) on the model's frame grid (as `recording_pitch` and
        inference.pitch_io give it) replaces the F0 predictor and `opts.trans`: it is used as is.
        """
        self.check_options(opts)
        self.check_length(len(audio), sr, label or "the input")
        wav = resample(np.asarray(audio, dtype=np.float32), sr, self.target_sample)
        total_frames = max(len(wav) // self.hop_length, 1)
        mix = mix_weights(timeline, total_frames) if timeline is not None else None
        track = pitch_rows(*pitch, total_frames) if pitch is not None else None
        segments = Slicer(self.target_sample, threshold_db=opts.slice_db).segments(wav)
        with self._progress_bar(len(wav), label) as bar:
            pieces = [self._convert_part(wav, segment, opts, mix, bar, track) for segment in segments]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def recording_pitch(self, audio: np.ndarray, sr: int, opts: ConversionOptions
                        ) -> tuple[np.ndarray, np.ndarray]:
        """The F0 predictor's pitch of a whole recording `[N]` at `sr`, shifted by `opts.trans`, on the model's
        frame grid: (f0 Hz `[T]`, 0 where unvoiced; voiced `[T]`). Given back to `convert` as `pitch`, it is
        the f0 that conversion uses (the predictor then runs once over the recording, not per clip)."""
        wav = resample(np.asarray(audio, dtype=np.float32), sr, self.target_sample)
        f0, uv = self.predicted_f0(wav, opts)
        return np.where(uv > 0.5, f0, 0.0), uv

    def frame_count(self, n_samples: int, sr: int) -> int:
        """Model frames of `n_samples` at `sr` (within a frame of `convert`'s count, which fits a pitch to it)."""
        return max(n_samples * self.target_sample // sr // self.hop_length, 1)

    def _convert_part(self, wav: np.ndarray, segment: Segment, opts: ConversionOptions, mix: np.ndarray | None,
                      bar: tqdm, pitch: np.ndarray | None = None) -> np.ndarray:
        """One slicer segment of `wav`: silence stays silence, a voiced segment is converted."""
        def advance(samples: int) -> None:
            bar.update(samples / self.target_sample)

        if segment.silent:
            advance(segment.end - segment.start)
            return np.zeros(segment.end - segment.start, dtype=np.float32)
        return self._convert_segment(wav[segment.start:segment.end], segment.start, opts, mix, advance, pitch)

    def _progress_bar(self, n_samples: int, label: str) -> tqdm:
        seconds = n_samples / self.target_sample
        return tqdm(total=round(seconds, 2), desc=label or "converting", unit="s", leave=True,
                    disable=seconds <= PROGRESS_MIN_SECONDS,
                    bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n:.0f}/{total:.0f} s of audio "
                               "[{elapsed}<{remaining}, {rate_fmt}]")

    def _convert_segment(self, wav: np.ndarray, offset: int, opts: ConversionOptions, mix: np.ndarray | None,
                         advance: Callable[[int], None] = lambda samples: None,
                         pitch: np.ndarray | None = None) -> np.ndarray:
        """A voiced segment: clips of `clip_plan` length overlapping by its overlap, crossfaded.

        `advance(samples)` is told how much of the segment is done after each clip.
        """
        clip, overlap = clip_plan(len(wav), self.target_sample, opts)
        if clip == 0:
            out = self._convert_padded(wav, offset, opts, mix, pitch)
            advance(len(wav))
            return out
        result = np.zeros(0, dtype=np.float32)
        start = 0
        while start < len(wav):
            begin = max(start - overlap, 0)
            end = min(start + clip, len(wav))
            piece = self._convert_padded(wav[begin:end], offset + begin, opts, mix, pitch)
            result = crossfade_join(result, piece, start - begin, opts.linear_gradient_retain)
            advance(end - start)
            start = end
        return result

    def _convert_padded(self, wav: np.ndarray, offset: int, opts: ConversionOptions,
                        mix: np.ndarray | None, pitch: np.ndarray | None = None) -> np.ndarray:
        """Pad `pad_seconds` of zeros each side, convert, trim the padding off; output length = input length.

        `mix` `[T, S]` and `pitch` `[T, 2]` cover the whole recording; the clip's rows are cut by its offset
        (the padding takes the edge rows, unvoiced for the pitch)."""
        pad = int(opts.pad_seconds * self.target_sample)
        padded = np.pad(wav, (pad, pad))
        first = (offset - pad) // self.hop_length
        frames = np.arange(first, first + len(padded) // self.hop_length)
        piece_mix = mix[np.clip(frames, 0, len(mix) - 1)] if mix is not None else None
        piece_pitch = None
        if pitch is not None:
            piece_pitch = pitch[np.clip(frames, 0, len(pitch) - 1)].copy()
            piece_pitch[(frames < 0) | (frames >= len(pitch)), 1] = 0.0
        out, _ = self.convert_clip(padded, opts, piece_mix, keep=(pad, pad + len(wav)), pitch=piece_pitch)
        return fit_length(out[pad:pad + len(wav)], len(wav))


def clip_plan(n_samples: int, sr: int, opts: ConversionOptions) -> tuple[int, int]:
    """(clip length, overlap) in samples for a voiced slice of `n_samples`; clip 0 converts it whole.

    The user's `-cl`/`-lg` apply while a clip with its overlap stays within `max_slice_seconds`; slices
    longer than that bound are otherwise cut into equal clips that, overlap included, fit the bound.
    """
    limit = int(opts.max_slice_seconds * sr) if opts.max_slice_seconds > 0 else 0
    clip = int(opts.clip_seconds * sr)
    if clip > 0:
        overlap = min(int(opts.linear_gradient * sr), clip // 2)
        if not limit or clip + overlap <= limit:
            return (0, 0) if n_samples <= clip else (clip, overlap)
    if not limit or n_samples <= limit:
        return 0, 0
    overlap = min(int((opts.linear_gradient or AUTO_CROSSFADE_SECONDS) * sr), limit // 4)
    n_clips = math.ceil(n_samples / (limit - overlap))
    return math.ceil(n_samples / n_clips), overlap


def crossfade_join(head: np.ndarray, tail: np.ndarray, overlap: int, retain: float) -> np.ndarray:
    """Append `tail` to `head`, where the first `overlap` samples of `tail` repeat the last of `head`.

    Only the middle `overlap * retain` samples of the overlap are blended (linear ramp); the margins on
    either side come from `head` (left) and `tail` (right).
    """
    overlap = min(overlap, len(head), len(tail))
    if overlap == 0:
        return np.concatenate([head, tail])
    blend = max(int(overlap * retain), 1)
    left = (overlap - blend) // 2
    ramp = np.linspace(0.0, 1.0, blend, dtype=np.float32)
    a = head[len(head) - overlap:]
    mixed = np.concatenate([a[:left], a[left:left + blend] * (1 - ramp) + tail[left:left + blend] * ramp,
                            tail[left + blend:overlap]])
    return np.concatenate([head[:len(head) - overlap], mixed, tail[overlap:]])


def calibration_tone(seconds: float, sr: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """A sung-like tone `[N]` (5 harmonics, f0 gliding 110 -> 880 Hz and back, a 0.5 s pause in the middle)
    and its f0 per frame `[N // hop]` (0 in the pause)."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 110 * 2 ** (3 * np.sin(np.pi * t / seconds) ** 2)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = np.abs(t - seconds / 2) > 0.25
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * voiced
    frames = f0[hop // 2::hop][:n // hop] * voiced[hop // 2::hop][:n // hop]
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32), frames.astype(np.float32)


def pitch_rows(f0: np.ndarray, voiced: np.ndarray, n_frames: int) -> np.ndarray:
    """(f0 `[T]`, voiced `[T]`) -> rows `[n_frames, 2]` of (f0 with unvoiced frames filled, uv) as the model
    takes them (the F0 predictors' filling), the last row repeated or rows cut to fit `n_frames`."""
    from f0_predictor.base import interpolate_unvoiced

    filled, uv = interpolate_unvoiced(np.where(np.asarray(voiced) > 0.5, np.asarray(f0, dtype=np.float64), 0.0))
    if len(filled) == 0:
        return np.zeros((n_frames, 2))
    return _fit_rows(np.stack([filled, uv.astype(np.float64)], axis=1), n_frames)


def _fit_rows(mix: np.ndarray, n: int) -> np.ndarray:
    if len(mix) >= n:
        return mix[:n]
    return np.concatenate([mix, np.repeat(mix[-1:], n - len(mix), axis=0)])


def _load_cluster(path: str | Path | None, feature_retrieval: bool) -> Mapping | None:
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        raise SvcError(f"cluster model not found: {path} (train one with "
                       f"{'train_index.py' if feature_retrieval else 'train_cluster.py'})")
    if feature_retrieval:
        from cluster.feature_index import load_feature_index
        return load_feature_index(path)
    from cluster.codebook import load_kmeans
    return load_kmeans(path)

