"""Compute the training features of every wav in the dataset (spec §3.3): content units, f0/uv,
linear spectrogram, and with --use_diff (or model.vol_embedding) volume and NSF-HiFiGAN mels.

Re-running skips files whose outputs all exist and load. Existing outputs are read without running code from
them; one that is refused (pickled code references, damage, wrong shape) is named in a warning with the reason
and computed again. Exit status: 0 when every file has its features, 1 when some files failed (each is named
with its reason; the others are still written).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli_types import int_range
from core.errors import run_cli

if TYPE_CHECKING:
    from preprocess.feature_files import FeatureSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--device", type=str, default=None,
                        help="device for the models (default: cuda, one GPU per worker in turn, else cpu)")
    parser.add_argument("--in_dir", type=Path, default=Path("dataset/44k"),
                        help="dataset root: <in_dir>/<speaker>/*.wav")
    parser.add_argument("--use_diff", action="store_true",
                        help="also write the shallow-diffusion features (volume, mel, augmented mel/volume)")
    parser.add_argument("--f0_predictor", type=str, default="rmvpe",
                        help="crepe, pm, dio, harvest, rmvpe or fcpe (default: rmvpe)")
    parser.add_argument("--num_processes", type=int_range(0), default=1, help="worker processes; 0 = one per CPU core")
    parser.add_argument("-c", "--config", type=Path, default=Path("configs/config.json"), help="So-VITS config")
    parser.add_argument("--diff_config", type=Path, default=Path("configs/diffusion.yaml"),
                        help="diffusion config (read with --use_diff): its vocoder.ckpt folder's config.json "
                             "gives the mel settings")
    parser.add_argument("--pretrain_dir", type=Path, default=Path("pretrain"),
                        help="folder with the pretrained encoder / f0 weights")
    parser.add_argument("--precision", choices=("auto", "fp32", "onnx"), default="auto",
                        help="the speech encoder's arithmetic: fp32 = torch (4.1's computation), onnx = ONNX Runtime "
                             "float32 on the CPU (the same features up to float rounding, two files at once, "
                             "~100 MB more memory on 5 s clips), auto (default) = onnx on a CPU for encoders "
                             "that support it, else fp32")
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> "FeatureSettings":
    from loguru import logger

    from core.config import load_diffusion_config, load_model_config
    from preprocess.feature_files import FeatureSettings

    from core.registry import encoder_record, f0_predictor_record

    config = load_model_config(args.config)
    encoder_record(config.model.speech_encoder)  # unknown names fail here, before any worker starts
    f0_predictor_record(args.f0_predictor)
    vocoder_config = None
    if args.use_diff:
        ckpt = load_diffusion_config(args.diff_config).get("vocoder", {}).get("ckpt")
        candidate = Path(ckpt).parent / "config.json" if ckpt else None
        if candidate is not None and candidate.is_file():
            vocoder_config = str(candidate)
            logger.info(f"mel settings from {candidate}")
        else:
            logger.info("no vocoder config.json found: using the 44.1 kHz / 128-bin NSF-HiFiGAN mel settings")
    data = config.data
    return FeatureSettings(
        speech_encoder=config.model.speech_encoder, f0_predictor=args.f0_predictor,
        sampling_rate=int(data.sampling_rate), hop_length=int(data.hop_length),
        filter_length=int(data.get("filter_length", 2048)), win_length=int(data.get("win_length", 2048)),
        write_volume=bool(config.model.get("vol_embedding", False)), use_diff=args.use_diff,
        vocoder_config=vocoder_config, pretrain_dir=str(args.pretrain_dir), precision=args.precision)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from loguru import logger

    from core.cli_types import check_device
    from core.errors import SvcError
    from core.memory import keep_freed_memory
    from preprocess.f0_ahead import start_f0_ahead

    keep_freed_memory()  # before torch allocates: each file reuses the pages of the one before
    if args.num_processes < 0:
        raise SvcError("--num_processes must be 0 (one per CPU core) or more")
    check_device(args.device)  # imports torch only when -d is given
    settings = build_settings(args)
    logger.info(f"encoder {settings.speech_encoder}, f0 predictor {settings.f0_predictor}, "
                f"{settings.sampling_rate} Hz, hop {settings.hop_length}")
    f0_ahead = start_f0_ahead(args.in_dir, settings) if args.num_processes == 1 else None
    try:
        from preprocess.features import run_batch  # imports torch: after the f0 process has forked

        result = run_batch(args.in_dir, settings, args.num_processes, args.device, f0_ahead=f0_ahead)
    finally:
        if f0_ahead is not None:
            f0_ahead.finish()
    logger.info(f"{result.processed} files processed, {result.skipped} already done, {len(result.failed)} failed")
    if result.failed:
        for name, reason in result.failed:
            logger.error(f"failed: {name}: {reason}")
        logger.error(f"{len(result.failed)} files have no features; fix or remove them and run again")
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
