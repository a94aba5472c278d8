"""Make a release copy of a trained G checkpoint (so-vits-svc 4.1's `compress_model.py`).

Drops the posterior encoder (`enc_q`, unused at inference) and the optimizer state, optionally stores the
weights as float16: `python compress_model.py -c logs/44k/config.json -i logs/44k/G_30400.pth`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default="configs/config.json",
                        help="the model's config.json (builds the fresh optimizer state)")
    parser.add_argument("-i", "--input", required=True, help="input G_<step>.pth")
    parser.add_argument("-o", "--output", default=None,
                        help="output path (default: <input stem>_release[_half]<ext> beside the input)")
    parser.add_argument("-hf", "--half", action="store_true", help="store the weights as float16")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing training checkpoint D_/G_<step>.pth at -o (the input itself is "
                             "never replaced)")
    return parser.parse_args(argv)


def default_output(input_path: str, half: bool) -> str:
    stem, ext = os.path.splitext(input_path)
    return f"{stem}_release{'_half' if half else ''}{ext}"


def main() -> int:
    args = parse_args()
    import torch
    from loguru import logger

    from core.checkpoint import read_checkpoint, release_checkpoint
    from core.config import load_model_config
    from core.fileio import make_output_dir, torch_save
    from core.outputs import check_output_file
    from training.loop import build_generator

    output = args.output or default_output(args.input, args.half)
    check_output_file(Path(output), [Path(args.input)], "-o/--output", args.overwrite, only_checkpoints=True)
    hps = load_model_config(args.config, need_train=True)
    checkpoint = read_checkpoint(args.input)
    model = build_generator(hps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(hps.train.learning_rate),
                                  betas=tuple(hps.train.betas), eps=float(hps.train.eps))
    make_output_dir(Path(output).parent, "-o/--output")
    torch_save(release_checkpoint(checkpoint, optimizer.state_dict(), half=args.half), output)
    before, after = Path(args.input).stat().st_size, Path(output).stat().st_size
    logger.info(f"wrote {output} ({after / 2**20:.1f} MiB, from {before / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    from core.errors import run_cli

    run_cli(main)
