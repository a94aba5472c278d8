"""Split dataset/44k/<speaker>/*.wav into train/val filelists and write configs/config.json and
configs/diffusion.yaml from the templates, with the speaker map and the speech encoder's dimensions.

Same flags and outputs as so-vits-svc 4.1, but reproducible: speaker ids follow sorted folder names and
the split is shuffled with --seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from core.errors import run_cli
from core.fileio import make_output_dir
from preprocess.filelists import build_configs, scan_dataset, split_dataset, write_configs, write_filelist
from core.registry import ENCODER_RECORDS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_list", type=str, default="./filelists/train.txt", help="output train list")
    parser.add_argument("--val_list", type=str, default="./filelists/val.txt", help="output validation list")
    parser.add_argument("--source_dir", type=str, default="./dataset/44k",
                        help="dataset folder, one sub-folder per speaker")
    parser.add_argument("--speech_encoder", type=str, default="vec768l12", choices=list(ENCODER_RECORDS),
                        help="speech encoder written into both configs (sets ssl_dim and related widths)")
    parser.add_argument("--vol_aug", action="store_true", help="volume augmentation and volume embedding")
    parser.add_argument("--tiny", action="store_true", help="tiny model template (filter_channels 512)")
    parser.add_argument("--config_dir", type=str, default="configs", help="where config.json and diffusion.yaml go")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the train/val shuffle")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    dataset = scan_dataset(Path(args.source_dir))
    prefix = args.source_dir.replace("\\", "/").rstrip("/") or "/"
    train, val = split_dataset(dataset, prefix, args.seed)
    config, diffusion = build_configs(sorted(dataset.files), args.speech_encoder, args.vol_aug, args.tiny,
                                      args.train_list, args.val_list)
    make_output_dir(Path(args.config_dir), "--config_dir")
    make_output_dir(Path(args.train_list).parent, "--train_list")
    make_output_dir(Path(args.val_list).parent, "--val_list")
    write_filelist(Path(args.train_list), train)
    write_filelist(Path(args.val_list), val)
    config_path, diffusion_path = write_configs(config, diffusion, Path(args.config_dir))
    for warning in dataset.warnings:
        logger.warning(warning)
    logger.info(f"{len(dataset.files)} speakers {config.spk.to_dict()}; {len(train)} training and {len(val)} "
                f"validation files -> {args.train_list}, {args.val_list}")
    logger.info(f"wrote {config_path} and {diffusion_path} (speech encoder {args.speech_encoder}, "
                f"ssl_dim {config.model.ssl_dim}, filter_channels {config.model.filter_channels})")
    return 0


if __name__ == "__main__":
    run_cli(main)
