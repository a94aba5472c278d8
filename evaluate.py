"""Measure how good conversions are: pitch, speaker, artefacts, per file and overall, as tables and JSON.

    python evaluate.py -m logs/44k/G_800.pth -c logs/44k/config.json -s nen -n raw/            # convert, then measure
    python evaluate.py -n raw/song.wav --converted results/ -s nen                              # measure results
    python evaluate.py -m logs/44k/G_800.pth -s nen -n raw/ --compare="-m logs/44k/G_1600.pth"  # two checkpoints

Takes every inference_main.py option (-t, -f0p, -cm/-cr/-fr, -shd, ...) for the conversion; --compare adds a
second run with more options on top of the first. See README.md, "Measure quality".
"""
from __future__ import annotations

import argparse
import copy
import shlex

from core.cli_types import finite_float
from core.errors import run_cli

def build_parser() -> argparse.ArgumentParser:
    from evaluation.pitch import DEFAULT_HOP_SECONDS, DEFAULT_TRACKER, TRACKERS  # numpy only: --help stays light
    from inference_main import build_parser as conversion_parser

    parser = conversion_parser()
    parser.description = __doc__
    parser.set_defaults(clean_names=None, spk_list=None)
    add = parser.add_argument
    add("--converted", nargs="+", default=None,
        help="measure these already converted files (or folders) instead of converting; each is paired with "
             "the -n source whose file name begins its name")
    add("--target_audio", default=None,
        help="the target speaker's training audio (folder or file) for speaker similarity "
             "(default: dataset/44k/<speaker> if present)")
    add("--compare", default=None, metavar="FLAGS",
        help='a second run: the same options with FLAGS on top, written with "=", e.g. '
             '--compare="-m logs/44k/G_1600.pth", --compare="-cr 0.5 -cm logs/44k/kmeans_10000.pt" or '
             '--compare="--converted other_results/"')
    add("--json", default="evaluation.json", help="write every figure here ('' for none)")
    add("--f0_tracker", default=DEFAULT_TRACKER, choices=TRACKERS, help="pitch tracker of the measurements")
    add("--f0_hop", type=finite_float(0, open_low=True), default=DEFAULT_HOP_SECONDS,
        help="seconds between pitch frames of the measurements")
    add("--no_speaker", action="store_true", help="skip speaker similarity")
    return parser


def main() -> None:
    from inference_main import check_args

    parser = build_parser()
    args = parser.parse_args()
    check_args(parser, args)
    if not args.clean_names:
        parser.error("-n: name the source files or a folder of them")
    if not 0.005 <= args.f0_hop <= 0.1:
        parser.error("--f0_hop must lie in 0.005..0.1 seconds")
    if args.compare is not None:
        check_args(parser, parser.parse_args(shlex.split(args.compare), namespace=copy.deepcopy(args)))
    from quality.evaluate import evaluate

    evaluate(parser, args)


if __name__ == "__main__":
    run_cli(main)
