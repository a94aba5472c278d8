"""Live conversion: microphone -> So-VITS model -> speakers, or a file streamed block by block.

    python realtime.py -m logs/44k/G_30400.pth -c configs/config.json -s nen --block 0.5
    python realtime.py -m G.pth -c config.json -s nen --input song.wav --output live.wav

Audio devices need PortAudio (sounddevice); --input/--output work without it. Every few seconds the
compute time per block is printed against the block length, with the count of underruns.
Latency: block + lookahead + crossfade + half the SOLA search + compute.
"""
from __future__ import annotations

import argparse

from core.cli_types import finite_float
from core.errors import run_cli
from f0_predictor.repair import F0_REPAIR_HELP
from inference.precision import NO_CLEANUP_HELP, PRECISION_HELP, PRECISIONS

MAX_TRANSPOSE = 48


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("-m", "--model_path", default="logs/44k/G_37600.pth", help="generator checkpoint G_*.pth")
    add("-c", "--config_path", default="logs/44k/config.json", help="the model's config.json")
    add("-s", "--spk_list", nargs=1, default=["buyizi"], help="target speaker name")
    add("-t", "--trans", type=finite_float(), default=0, help="pitch shift in semitones")
    add("-f0p", "--f0_predictor", default="pm", help="pm (no weights), fcpe or rmvpe (real-time capable), "
        "dio, harvest, crepe")
    add("-ft", "--f0_filter_threshold", type=finite_float(0), default=0.05, help="f0 confidence threshold (rmvpe/fcpe)")
    add("-cm", "--cluster_model_path", default="", help="k-means model or feature index (-fr)")
    add("-cr", "--cluster_infer_ratio", type=finite_float(), default=0,
        help="share of cluster/retrieval features, 0..1")
    add("-fr", "--feature_retrieval", action="store_true", help="feature retrieval instead of k-means")
    add("-ns", "--noice_scale", type=finite_float(), default=0.4, help="prior noise scale")
    add("-lea", "--loudness_envelope_adjustment", type=finite_float(0, 1), default=1,
        help="1 keeps the output loudness envelope, 0 imposes the input's")
    add("-usm", "--use_spk_mix", action="store_true", help="static speaker mix: the timeline's starting weights")
    add("--spk_mix_file", default=None, help="speaker-mix timeline (.json or 4.1's spkmix.py)")
    add("-d", "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    add("--no_cleanup", action="store_true", help=NO_CLEANUP_HELP)
    add("--f0_repair", action="store_true", help=F0_REPAIR_HELP)
    add("--pretrain_dir", default="pretrain", help="folder of the pretrained encoders")
    add("--list_devices", action="store_true", help="list the audio devices and exit")
    add("--input_device", default=None, help="input device (number or name, see --list_devices)")
    add("--output_device", default=None, help="output device (number or name)")
    add("--block", type=finite_float(), default=0.5, help="block length in seconds")
    add("--crossfade", type=finite_float(), default=0.05, help="SOLA crossfade in seconds")
    add("--context", type=finite_float(), default=1.0,
        help="left context in seconds given to the encoder with each block")
    add("--lookahead", type=finite_float(), default=0.0, help="right context in seconds; adds to the latency")
    add("--sola_search", type=finite_float(), default=0.012, help="SOLA offset search window in seconds")
    add("--silence_db", type=finite_float(high=0), default=-50.0,
        help="input quieter than this gives silence, skipping the model")
    add("--passthrough", action="store_true", help="route the input to the output unconverted (check levels)")
    add("--input", default=None, help="stream this audio file instead of a microphone")
    add("--output", default=None, help="write the converted stream of --input here")
    add("--realtime", action="store_true", help="with --input: feed blocks at real-time pace")
    p.set_defaults(auto_predict_f0=False, enhance=False, shallow_diffusion=False, only_diffusion=False)
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together")
    if not 0.01 <= args.block <= 10:
        parser.error("--block must lie in 0.01..10 seconds")
    if min(args.crossfade, args.context, args.lookahead, args.sola_search) < 0:
        parser.error("--crossfade, --context, --lookahead and --sola_search must not be negative")
    if not 0 <= args.cluster_infer_ratio <= 1:
        parser.error("-cr/--cluster_infer_ratio must lie in 0..1")
    if args.noice_scale < 0:
        parser.error("-ns/--noice_scale must not be negative")
    if abs(args.trans) > MAX_TRANSPOSE:
        parser.error(f"-t/--trans must lie within -{MAX_TRANSPOSE}..{MAX_TRANSPOSE} semitones")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check_args(parser, args)
    from inference.live import run_realtime
    run_realtime(args)


if __name__ == "__main__":
    run_cli(main)
