"""Extract the pitch of an audio file without converting it: a CSV to edit and give back to inference_main.py.

    python pitch.py -n raw/song.wav -f0p rmvpe -c logs/44k/config.json -o song.pitch.csv
    python inference_main.py -n song.wav --pitch_file song.pitch.csv ...

The CSV has the header `time_s,f0_hz,voiced` and one row per model frame (hop and rate from -c, default
512 at 44.1 kHz); f0 is 0 and voiced 0 where the predictor heard no pitch (inference/pitch_io.py).
"""
from __future__ import annotations

import argparse

from core.cli_types import finite_float
from core.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("-n", "--input", required=True, help="the audio file")
    add("-f0p", "--f0_predictor", default="pm", help="pm, dio, harvest, crepe, rmvpe or fcpe")
    add("-c", "--config_path", default=None, help="the model's config.json (frame grid; default 44100 Hz, hop 512)")
    add("-o", "--output", default=None, help="the CSV to write (default: <input stem>.pitch.csv beside the input)")
    add("-t", "--trans", type=finite_float(-48, 48), default=0, help="pitch shift in semitones, written into the CSV")
    add("-ft", "--f0_filter_threshold", type=finite_float(0), default=0.05,
        help="f0 confidence threshold (crepe/rmvpe/fcpe)")
    add("-d", "--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    add("--pretrain_dir", default="pretrain", help="folder of the pretrained F0 predictor weights")
    return p


def main() -> None:
    args = build_parser().parse_args()
    from loguru import logger

    from inference.pitch_extract import write_pitch_of

    target = write_pitch_of(args.input, args.output, args.f0_predictor, args.config_path,
                            threshold=args.f0_filter_threshold, trans=args.trans, device=args.device,
                            pretrain_dir=args.pretrain_dir)
    logger.info(f"{args.input} -> {target}")


if __name__ == "__main__":
    run_cli(main)
