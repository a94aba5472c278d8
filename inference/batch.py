"""inference_main.py's work: convert every input in raw/ for every speaker and write results/."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from loguru import logger

from inference.spkmix import load_timeline
from inference.svc import ConversionOptions, Svc
from modules.audio import load_audio, write_audio
from modules.errors import SvcError

DEFAULT_KMEANS = "logs/44k/kmeans_10000.pt"
DEFAULT_INDEX = "logs/44k/feature_and_index.pkl"


def input_path(raw_dir: Path, name: str) -> Path:
    """4.1 appends .wav to a name without a dot."""
    return raw_dir / (name if "." in name else f"{name}.wav")


def output_name(clean_name: str, trans: float, speaker: str, args: argparse.Namespace) -> str:
    """4.1's naming: {name}_{key}_{spk}{cluster}_{mode}_{f0p}.{fmt}."""
    key = "auto" if args.auto_predict_f0 else f"{trans:g}key"
    cluster = f"_{args.cluster_infer_ratio:g}" if args.cluster_infer_ratio != 0 else ""
    mode = "diff" if args.only_diffusion else "sovdiff" if args.shallow_diffusion else "sovits"
    return f"{clean_name}_{key}_{speaker}{cluster}_{mode}_{args.f0_predictor}.{args.wav_format}"


def cluster_path(args: argparse.Namespace) -> str | None:
    if args.cluster_infer_ratio == 0:
        return None
    return args.cluster_model_path or (DEFAULT_INDEX if args.feature_retrieval else DEFAULT_KMEANS)


def spk_mix_path(args: argparse.Namespace) -> Path:
    if args.spk_mix_file:
        return Path(args.spk_mix_file)
    json_path = Path("spkmix.json")
    return json_path if json_path.is_file() else Path("spkmix.py")


def options_for(args: argparse.Namespace, speaker: str, trans: float) -> ConversionOptions:
    return ConversionOptions(
        speaker=speaker, trans=trans, cluster_infer_ratio=args.cluster_infer_ratio,
        auto_predict_f0=args.auto_predict_f0, noice_scale=args.noice_scale, f0_predictor=args.f0_predictor,
        f0_filter_threshold=args.f0_filter_threshold, enhancer_adaptive_key=args.enhancer_adaptive_key,
        loudness_envelope_adjustment=args.loudness_envelope_adjustment, k_step=args.k_step,
        second_encoding=args.second_encoding, slice_db=args.slice_db, pad_seconds=args.pad_seconds,
        clip_seconds=args.clip, linear_gradient=args.linear_gradient,
        linear_gradient_retain=args.linear_gradient_retain)


def load_svc(args: argparse.Namespace) -> Svc:
    diffusion = None
    if args.shallow_diffusion or args.only_diffusion:
        from inference.diffusion_stage import DiffusionStage
        diffusion = DiffusionStage.load(args)
    if args.only_diffusion:
        return diffusion.standalone_svc(args)
    return Svc(args.model_path, args.config_path, device=args.device, cluster_model_path=cluster_path(args),
               feature_retrieval=args.feature_retrieval, enhance=args.enhance and not args.shallow_diffusion,
               enhancer_path=Path(args.pretrain_dir) / "nsf_hifigan" / "model", pretrain_dir=args.pretrain_dir,
               diffusion=diffusion)


def convert_files(args: argparse.Namespace) -> None:
    raw_dir, results_dir = Path(args.raw_dir), Path(args.results_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    inputs = [input_path(raw_dir, name) for name in args.clean_names]
    for path in inputs:
        if not path.is_file():
            raise SvcError(f"input not found: {path} (put the files to convert into {raw_dir}/)")
    trans = list(args.trans) + [args.trans[0]] * max(len(inputs) - len(args.trans), 0)

    started = time.perf_counter()
    svc = load_svc(args)
    logger.info(f"model loaded in {time.perf_counter() - started:.1f} s on {svc.device}")
    speakers: list[str | None] = list(args.spk_list)
    timeline = None
    if args.use_spk_mix:
        timeline = load_timeline(spk_mix_path(args), svc.spk2id)
        if len(timeline) > 1:
            speakers = [None]
        else:
            timeline = None

    for name, path, shift in zip(args.clean_names, inputs, trans):
        audio, sr = load_audio(path)
        for speaker in speakers:
            started = time.perf_counter()
            opts = options_for(args, speaker if speaker is not None else 0, shift)
            out = svc.convert(audio, sr, opts, timeline=timeline)
            target = results_dir / output_name(name, shift, speaker or "spk_mix", args)
            write_audio(target, out, svc.target_sample, subtype=None, format=args.wav_format)
            seconds = len(audio) / sr
            took = time.perf_counter() - started
            logger.info(f"{path.name} -> {target} ({seconds:.1f} s of audio in {took:.1f} s)")
