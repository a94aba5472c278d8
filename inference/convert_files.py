"""inference_main.py's work: check the run, convert every input for every speaker, write results/."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
from loguru import logger

from inference.naming import claim_result_path, output_name
from inference.preflight import InputFile, Job, check_before_loading, cluster_path
from core.audio import load_audio, write_audio
from core.errors import SvcError

if TYPE_CHECKING:
    from inference.svc import ConversionOptions, Svc


def options_for(args: argparse.Namespace, speaker: str | int, trans: float) -> ConversionOptions:
    from inference.svc import ConversionOptions

    return ConversionOptions(
        speaker=speaker, trans=trans, cluster_infer_ratio=args.cluster_infer_ratio,
        auto_predict_f0=args.auto_predict_f0, noice_scale=args.noice_scale, f0_predictor=args.f0_predictor,
        f0_filter_threshold=args.f0_filter_threshold, enhancer_adaptive_key=args.enhancer_adaptive_key,
        loudness_envelope_adjustment=args.loudness_envelope_adjustment, k_step=args.k_step,
        second_encoding=args.second_encoding, slice_db=args.slice_db, pad_seconds=args.pad_seconds,
        clip_seconds=args.clip, linear_gradient=args.linear_gradient,
        linear_gradient_retain=args.linear_gradient_retain, max_slice_seconds=args.max_slice_seconds,
        cleanup=not getattr(args, "no_cleanup", False), f0_repair=getattr(args, "f0_repair", False))


def load_svc(args: argparse.Namespace) -> Svc:
    diffusion = None
    if args.shallow_diffusion or args.only_diffusion:
        from inference.diffusion_stage import DiffusionStage
        diffusion = DiffusionStage.load(args)
    if args.only_diffusion:
        return diffusion.standalone_svc(args)
    from inference.svc import Svc

    return Svc(args.model_path, args.config_path, device=args.device, cluster_model_path=cluster_path(args),
               feature_retrieval=args.feature_retrieval, enhance=args.enhance and not args.shallow_diffusion,
               enhancer_path=Path(args.pretrain_dir) / "nsf_hifigan" / "model", pretrain_dir=args.pretrain_dir,
               diffusion=diffusion, precision=getattr(args, "precision", "fp32"))


def convert_files(args: argparse.Namespace) -> None:
    """Check everything that can be checked without the model (torch is not even imported yet), then convert."""
    job = check_before_loading(args)
    check_pitch_file(getattr(args, "pitch_file", None))
    started = time.perf_counter()
    svc = load_svc(args)
    logger.info(f"model loaded in {time.perf_counter() - started:.1f} s on {svc.device}")
    svc.check_options(options_for(args, 0, 0))
    check_lengths(svc, job.inputs)
    for item in job.inputs:
        audio, sr = load_audio(item.path)
        pitch = input_pitch(svc, args, item, audio, sr)
        for speaker in job.speakers:
            convert_one(svc, args, job, item, speaker, audio, sr, pitch)


def check_pitch_file(path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise SvcError(f"--pitch_file {path}: no such file")


def input_pitch(svc: Svc, args: argparse.Namespace, item: InputFile, audio: np.ndarray, sr: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """The pitch an input is converted with: --pitch_file's, with --export_pitch the predictor's over the
    whole recording (so that the exported file is the f0 used), else None (the predictor's, per clip)."""
    if getattr(args, "pitch_file", None) is not None:
        from inference.pitch_io import read_pitch
        return read_pitch(args.pitch_file, svc.frame_count(len(audio), sr), svc.hop_length, svc.target_sample)
    if getattr(args, "export_pitch", False):
        return svc.recording_pitch(audio, sr, options_for(args, 0, item.trans))
    return None


def check_lengths(svc: Svc, inputs: list[InputFile]) -> None:
    """Refuse a too short input before any result is written (soundfile reads only the header here)."""
    for item in inputs:
        info = soundfile.info(str(item.path))
        svc.check_length(info.frames, info.samplerate, f"input {item.path}")


def convert_one(svc: Svc, args: argparse.Namespace, job: Job, item: InputFile, speaker: str | None,
                audio: np.ndarray, sr: int, pitch: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Convert one input for one speaker (None: the speaker-mix timeline) and write the result (and with
    --export_pitch its pitch CSV beside it)."""
    started = time.perf_counter()
    speaker_name = speaker or "spk_mix"
    out = svc.convert(audio, sr, options_for(args, speaker if speaker is not None else 0, item.trans),
                      timeline=job.timeline, label=f"{item.path.name} -> {speaker_name}", pitch=pitch)
    target = claim_result_path(job.results_dir, output_name(item.name, item.trans, speaker_name, args),
                               args.overwrite)
    write_audio(target, out, svc.target_sample, subtype=None, format=args.wav_format)
    if getattr(args, "export_pitch", False) and pitch is not None:
        from inference.pitch_io import write_pitch_csv
        write_pitch_csv(target.with_suffix(".pitch.csv"), *pitch, svc.hop_length, svc.target_sample)
    took = time.perf_counter() - started
    logger.info(f"{item.path.name} -> {target} ({len(audio) / sr:.1f} s of audio in {took:.1f} s)")
