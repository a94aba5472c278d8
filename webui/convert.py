"""The Convert tab's work: check like inference_main.py, load the model once, convert an upload, plot its pitch.

The form is turned into the namespace of inference_main.py's flags, so the very checks and loader the
script uses (inference.preflight, inference.convert_files) run here too. One model stays loaded between
conversions; choosing another model, cluster file, enhancer or diffusion setting loads anew.
"""
from __future__ import annotations

import argparse
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import soundfile
from loguru import logger

from core.audio import load_audio, write_audio
from core.cli_types import check_number
from core.errors import AudioError, ConfigError, SvcError
from core.registry import F0_PREDICTOR_RECORDS
from inference.convert_files import load_svc, options_for
from inference.naming import claim_result_path, speaker_part, upload_stem
from inference.preflight import (check_auto_f0, check_model_files, check_pretrained_files, model_facts,
                                 prepare_results_dir)
from inference.speakers import speaker_id
from inference.spkmix import Timeline, validate_timeline
from webui.catalog import DiffusionFiles, is_feature_index
from webui.pitchplot import pitch_figure

if TYPE_CHECKING:
    from inference.svc import Svc

Progress = Callable[[float, str], None]
F0_PREDICTORS = list(F0_PREDICTOR_RECORDS)
MAX_TRANSPOSE = 48
MIX_ITEM = re.compile(r"^\s*(?P<name>[^=:]+?)\s*[=:]\s*(?P<weight>[-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class ModelChoice:
    """The files of the model to convert with (all chosen from the logs folder or uploaded)."""
    model_path: Path
    config_path: Path
    cluster_path: Path | None = None
    diffusion: DiffusionFiles | None = None


@dataclass(frozen=True)
class ConvertSettings:
    """The form's options, named as inference_main.py's long flags."""
    speaker: str = ""
    speaker_mix: str = ""                # "alto=0.7, tenor=0.3": a static mix instead of one speaker
    trans: float = 0.0
    f0_predictor: str = "pm"
    auto_predict_f0: bool = False
    cluster_infer_ratio: float = 0.0
    noice_scale: float = 0.4
    f0_filter_threshold: float = 0.05
    slice_db: float = -40.0
    pad_seconds: float = 0.5
    clip: float = 0.0
    linear_gradient: float = 0.0
    linear_gradient_retain: float = 0.75
    loudness_envelope_adjustment: float = 1.0
    enhance: bool = False
    enhancer_adaptive_key: float = 0.0
    shallow_diffusion: bool = False
    k_step: int = 100
    second_encoding: bool = False
    cleanup: bool = True                 # the output stage (DC removal, silent pauses); off: 4.1's output


@dataclass
class Conversion:
    path: Path                  # the result file (wav) under the results folder
    sample_rate: int
    seconds: float
    input_seconds: float
    plot: np.ndarray            # RGB image of input vs output pitch over the output's spectrogram
    took: float = 0.0
    notes: list[str] = field(default_factory=list)


# The form's numbers and the ranges inference_main.py's flag types give them: (low, high, open_low, open_high).
NUMBER_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "trans": (-MAX_TRANSPOSE, MAX_TRANSPOSE, False, False), "cluster_infer_ratio": (0, 1, False, False),
    "noice_scale": (0, None, False, False), "f0_filter_threshold": (0, None, False, False),
    "slice_db": (-100, 0, True, True), "pad_seconds": (0, None, False, False), "clip": (0, None, False, False),
    "linear_gradient": (0, None, False, False), "linear_gradient_retain": (0, 1, True, False),
    "loudness_envelope_adjustment": (0, 1, False, False), "enhancer_adaptive_key": (None, None, False, False),
    "k_step": (1, None, False, False),
}


def check_settings(settings: ConvertSettings) -> None:
    """The ranges inference_main.py's flags enforce, for callers other than the sliders; NaN is refused too
    (`abs(nan) > 48` is False, so a comparison alone lets it through)."""
    for name, (low, high, open_low, open_high) in NUMBER_RANGES.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {type(value).__name__}")
        try:
            check_number(float(value), name, low, high, open_low, open_high)
        except SvcError as error:
            raise ConfigError(str(error)) from None
    if abs(settings.trans) > MAX_TRANSPOSE:
        raise ConfigError(f"transpose {settings.trans:g} is out of range -{MAX_TRANSPOSE}..{MAX_TRANSPOSE} semitones")
    if not 0 <= settings.cluster_infer_ratio <= 1:
        raise ConfigError("the cluster / retrieval ratio must lie in 0..1")
    if min(settings.clip, settings.pad_seconds, settings.linear_gradient, settings.noice_scale) < 0:
        raise ConfigError("clip, padding, crossfade and noise scale must not be negative")
    if not 0 < settings.linear_gradient_retain <= 1:
        raise ConfigError("the crossfade retain share must lie in (0, 1]")
    if settings.f0_predictor not in F0_PREDICTORS:
        raise ConfigError(f"unknown F0 predictor {settings.f0_predictor!r}; choose one of {', '.join(F0_PREDICTORS)}")


def script_args(choice: ModelChoice, settings: ConvertSettings, pretrain_dir: Path,
                device: str | None, precision: str = "fp32") -> argparse.Namespace:
    """inference_main.py's flags for this form (the fields inference.preflight and convert_files read)."""
    diffusion = choice.diffusion
    shallow = settings.shallow_diffusion and diffusion is not None
    return argparse.Namespace(
        model_path=str(choice.model_path), config_path=str(choice.config_path), only_diffusion=False,
        shallow_diffusion=shallow, enhance=settings.enhance, f0_predictor=settings.f0_predictor,
        pretrain_dir=str(pretrain_dir), device=device, auto_predict_f0=settings.auto_predict_f0,
        cluster_infer_ratio=settings.cluster_infer_ratio if choice.cluster_path else 0.0,
        cluster_model_path=str(choice.cluster_path or ""), feature_retrieval=is_feature_index(choice.cluster_path),
        diffusion_model_path=str(diffusion.model) if diffusion else "",
        diffusion_config_path=str(diffusion.config) if diffusion else "",
        k_step=int(settings.k_step), second_encoding=settings.second_encoding, noice_scale=settings.noice_scale,
        f0_filter_threshold=settings.f0_filter_threshold, enhancer_adaptive_key=settings.enhancer_adaptive_key,
        loudness_envelope_adjustment=settings.loudness_envelope_adjustment, slice_db=settings.slice_db,
        pad_seconds=settings.pad_seconds, clip=settings.clip, linear_gradient=settings.linear_gradient,
        linear_gradient_retain=settings.linear_gradient_retain, max_slice_seconds=30.0,
        precision=precision, no_cleanup=not settings.cleanup)


def parse_speaker_mix(text: str, spk2id: dict[str, int]) -> Timeline | None:
    """'alto=0.7, tenor=0.3' -> a constant timeline over the whole output (unnamed speakers weigh 0)."""
    if not text.strip():
        return None
    weights: dict[str, float] = {}
    for item in text.split(","):
        match = MIX_ITEM.match(item)
        if not match:
            raise ConfigError(f"speaker mix item {item.strip()!r} must look like name=weight, e.g. "
                              f"{next(iter(spk2id))}=0.5")
        try:
            weights[match["name"]] = float(match["weight"])
        except ValueError:
            raise ConfigError(f"speaker mix weight {match['weight']!r} is not a number") from None
    raw = {name: [[0.0, 1.0, weight, weight]] for name, weight in weights.items()}
    for name in spk2id:
        raw.setdefault(name, [[0.0, 1.0, 0.0, 0.0]])
    timeline = validate_timeline(raw, spk2id, source="speaker mix")
    if not any(segments[0][2] > 0 for segments in timeline.values()):
        raise ConfigError("speaker mix: give at least one speaker a weight above 0")
    return timeline


def read_upload(path: str | Path | None, max_seconds: float) -> tuple[np.ndarray, int]:
    """An uploaded or recorded file as mono float32; the message names the upload, not the server's copy."""
    if not path:
        raise AudioError("upload a recording or record one with the microphone first")
    name = Path(path).name
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError, ValueError):
        raise AudioError(f"the uploaded file '{name}' is not audio that can be read "
                         "(use wav, flac, ogg or mp3)") from None
    if info.frames / max(info.samplerate, 1) > max_seconds:
        raise AudioError(f"'{name}' is {info.frames / info.samplerate:.0f} s long; this page converts at most "
                         f"{max_seconds:g} s (webUI.py --max_seconds)")
    try:
        return load_audio(path)
    except AudioError as error:
        raise AudioError(str(error).replace(str(path), f"'{name}'")) from None


class Converter:
    """Keeps one loaded Svc (the last one asked for) and converts with it, one conversion at a time."""

    def __init__(self, pretrain_dir: Path, results_dir: Path, device: str | None = None,
                 max_seconds: float = 600.0, precision: str = "fp32"):
        self.pretrain_dir = Path(pretrain_dir)
        self.results_dir = Path(results_dir)
        self.device = device
        self.max_seconds = max_seconds
        self.precision = precision
        self._lock = threading.Lock()
        self._loaded: tuple[tuple, Svc] | None = None

    def check(self, choice: ModelChoice, settings: ConvertSettings) -> tuple[argparse.Namespace, str | int,
                                                                            Timeline | None]:
        """Everything inference_main.py checks before loading; returns (flags, speaker, speaker-mix timeline)."""
        check_settings(settings)
        if settings.shallow_diffusion and choice.diffusion is None:
            raise ConfigError("shallow diffusion needs a diffusion model: train one with train_diff.py "
                              "(its model_<step>.pt and config.yaml go to <model folder>/diffusion/)")
        args = script_args(choice, settings, self.pretrain_dir, self.device, self.precision)
        facts = model_facts(args)
        if not facts.spk2id:
            raise ConfigError(f"config {choice.config_path.name} lists no speakers (spk)")
        timeline = parse_speaker_mix(settings.speaker_mix, facts.spk2id)
        speaker: str | int = settings.speaker or next(iter(facts.spk2id))
        if timeline is None:
            speaker_id(facts.spk2id, speaker)
        check_auto_f0(args, facts)
        check_pretrained_files(args, facts)
        check_model_files(args)
        return args, speaker, timeline

    def svc_for(self, args: argparse.Namespace) -> Svc:
        """The loaded model for these flags, loading it when they differ from the last conversion's."""
        key = tuple(getattr(args, name) for name in (
            "model_path", "config_path", "cluster_model_path", "feature_retrieval", "enhance", "shallow_diffusion",
            "diffusion_model_path", "diffusion_config_path", "k_step", "pretrain_dir", "device"))
        key += (Path(args.model_path).stat().st_mtime_ns,)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None
            started = time.perf_counter()
            self._loaded = (key, load_svc(args))
            logger.info(f"web UI: loaded {args.model_path} in {time.perf_counter() - started:.1f} s")
        return self._loaded[1]

    def convert(self, choice: ModelChoice, settings: ConvertSettings, audio_path: str | Path | None,
                progress: Progress = lambda share, what: None) -> Conversion:
        """Convert one uploaded recording; the result is written as wav under the results folder."""
        progress(0.0, "checking")
        args, speaker, timeline = self.check(choice, settings)
        audio, sr = read_upload(audio_path, self.max_seconds)
        with self._lock:
            progress(0.1, "loading the model")
            svc = self.svc_for(args)
            options = options_for(args, speaker, settings.trans)
            svc.check_options(options)
            progress(0.2, "converting")
            started = time.perf_counter()
            out = svc.convert(audio, sr, options, timeline=timeline, label=Path(audio_path).name)
            took = time.perf_counter() - started
            progress(0.85, "measuring the pitch")
            plot = self.plot(svc, audio, sr, out, settings)
        progress(0.95, "writing the result")
        speaker_name = "spk_mix" if timeline is not None else str(speaker)
        raw = "" if settings.cleanup else "_raw"  # inference_main.py's tag for --no_cleanup
        stem = f"{upload_stem(audio_path)}_{settings.trans:g}key_{speaker_part(speaker_name)}{raw}"
        target = claim_result_path(prepare_results_dir(self.results_dir), f"{stem}.wav", overwrite=False)
        write_audio(target, out, svc.target_sample, subtype=None, format="wav")
        return Conversion(target, svc.target_sample, len(out) / svc.target_sample, len(audio) / sr, plot, took)

    @staticmethod
    def plot(svc: Svc, audio: np.ndarray, sr: int, out: np.ndarray, settings: ConvertSettings) -> np.ndarray:
        from core.audio import resample

        predictor = svc.f0_predictor(settings.f0_predictor, settings.f0_filter_threshold)
        source = resample(audio, sr, svc.target_sample)
        input_f0, input_uv = predictor.compute_f0_uv(source)
        output_f0, output_uv = predictor.compute_f0_uv(out)
        shifted = input_f0 * input_uv * 2 ** (settings.trans / 12)
        return pitch_figure(out, svc.target_sample, svc.hop_length, shifted, output_f0 * output_uv, settings.trans)


def conversion_summary(result: Conversion) -> str:
    return (f"{result.input_seconds:.2f} s in, {result.seconds:.2f} s out at {result.sample_rate} Hz, "
            f"converted in {result.took:.1f} s; saved as {result.path}")

