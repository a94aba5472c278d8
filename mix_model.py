"""Blend several So-VITS generator checkpoints into one (static model mix, as 4.1's web UI does).

    python mix_model.py -i a/G_1000.pth b/G_2000.pth -p 70 30 --mode convex -o output.pth

convex: weights are the softmax of percent/100; linear: weights are percent/100 as given.
The models must share one architecture (same config); the first checkpoint's other entries are kept.
"""
from __future__ import annotations

import argparse

from core.cli_types import finite_float
from core.errors import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inputs", nargs="+", required=True, help="generator checkpoints G_*.pth")
    parser.add_argument("-p", "--percentages", nargs="+", type=finite_float(), required=True,
                        help="one weight per model")
    parser.add_argument("--mode", choices=["convex", "linear"], default="convex")
    parser.add_argument("-o", "--output", default="output.pth",
                        help="the mixed checkpoint; an existing file is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing -o file (one of the inputs is never replaced)")
    args = parser.parse_args()
    from pathlib import Path

    from core.checkpoint import mix_checkpoints
    from core.fileio import torch_save
    from core.outputs import check_output_file

    check_output_file(Path(args.output), [Path(p) for p in args.inputs], "-o/--output", args.overwrite)
    torch_save(mix_checkpoints(args.inputs, args.percentages, args.mode), args.output)
    print(f"mixed model written to {args.output}")


if __name__ == "__main__":
    run_cli(main)
