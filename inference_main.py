"""Convert songs with a trained model: `raw/<name>` -> `results/<name>_<key>_<speaker>..._<mode>_<f0p>.<fmt>`.

    python inference_main.py -m logs/44k/G_30400.pth -c configs/config.json -n song.wav -t 0 -s nen

Flags and defaults are 4.1's (spec §3.8); every input is converted for every listed speaker.
Everything that can be checked (inputs, results folder, format, speakers, pretrained files) is checked
before the model is loaded. Result names carry tags for options 4.1's names leave out (inference/naming.py),
and an existing result is never overwritten unless --overwrite is given.
"""
from __future__ import annotations

import argparse

from core.cli_types import SLICE_DB, finite_float, int_range
from core.errors import run_cli
from f0_predictor.repair import F0_REPAIR_HELP
from inference.precision import NO_CLEANUP_HELP, PRECISION_HELP, PRECISIONS

MAX_TRANSPOSE = 48  # semitones: four octaves either way is beyond any voice
MIN_MAX_SLICE_SECONDS = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("-m", "--model_path", default="logs/44k/G_37600.pth", help="generator checkpoint G_*.pth")
    add("-c", "--config_path", default="logs/44k/config.json", help="the model's config.json")
    add("-cl", "--clip", type=finite_float(0), default=0,
        help="forced clip length in seconds (0: slice on silence only)")
    add("-n", "--clean_names", nargs="+", default=["君の知らない物語-src.wav"], help="file names inside raw/")
    add("-t", "--trans", nargs="+", type=finite_float(), default=[0], help="pitch shift in semitones, one per file")
    add("-s", "--spk_list", nargs="+", default=["buyizi"], help="target speaker names")
    add("-a", "--auto_predict_f0", action="store_true", help="predict f0 with the model (speech, not singing)")
    add("-cm", "--cluster_model_path", default="", help="k-means model or feature index (-fr)")
    add("-cr", "--cluster_infer_ratio", type=finite_float(), default=0,
        help="share of cluster/retrieval features, 0..1")
    add("-lg", "--linear_gradient", type=finite_float(), default=0, help="crossfade seconds between forced clips")
    add("-f0p", "--f0_predictor", default="pm", help="pm, dio, harvest, crepe, rmvpe or fcpe")
    add("-eh", "--enhance", action="store_true", help="NSF-HiFiGAN enhancer")
    add("-shd", "--shallow_diffusion", action="store_true", help="shallow diffusion after So-VITS")
    add("-usm", "--use_spk_mix", action="store_true", help="dynamic speaker mix from --spk_mix_file")
    add("-lea", "--loudness_envelope_adjustment", type=finite_float(0, 1), default=1,
        help="1 keeps the output loudness envelope, 0 imposes the input's")
    add("-fr", "--feature_retrieval", action="store_true", help="feature retrieval instead of k-means")
    add("-dm", "--diffusion_model_path", default="logs/44k/diffusion/model_0.pt")
    add("-dc", "--diffusion_config_path", default="logs/44k/diffusion/config.yaml")
    add("-ks", "--k_step", type=int_range(1), default=100, help="shallow diffusion depth")
    add("-se", "--second_encoding", action="store_true", help="re-encode the So-VITS output before diffusion")
    add("-od", "--only_diffusion", action="store_true", help="diffusion only, no So-VITS")
    add("-fs", "--flow_steps", type=int, default=None,
        help="integration steps of a rectified-flow diffusion model (default: its config's infer.flow_steps, else 8)")
    add("-sd", "--slice_db", type=SLICE_DB, default=-40, help="silence threshold in dB")
    add("-d", "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add("-ns", "--noice_scale", type=finite_float(), default=0.4, help="prior noise scale")
    add("-p", "--pad_seconds", type=finite_float(), default=0.5, help="zero padding around each slice (removed again)")
    add("-wf", "--wav_format", default="flac", help="output format: flac, wav, ogg ...")
    add("-lgr", "--linear_gradient_retain", type=finite_float(), default=0.75, help="blended share of the crossfade")
    add("-eak", "--enhancer_adaptive_key", type=finite_float(), default=0, help="enhancer key adaptation (semitones)")
    add("-ft", "--f0_filter_threshold", type=finite_float(0), default=0.05,
        help="f0 confidence threshold (crepe/rmvpe/fcpe)")
    add("--spk_mix_file", default=None, help="speaker-mix timeline (.json, or 4.1's spkmix.py); "
        "default: spkmix.json, else spkmix.py")
    add("--raw_dir", default="raw", help="folder of the inputs")
    add("--results_dir", default="results", help="folder of the outputs")
    add("--pretrain_dir", default="pretrain", help="folder of the pretrained encoders and vocoder")
    add("--max_slice_seconds", type=finite_float(), default=30,
        help="slices longer than this are cut into crossfaded clips to bound memory (0: never)")
    add("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    add("--no_cleanup", action="store_true", help=NO_CLEANUP_HELP)
    add("--f0_repair", action="store_true", help=F0_REPAIR_HELP)
    add("--export_pitch", action="store_true",
        help="also write <result>.pitch.csv: the f0 the conversion used (after -t), one row per model frame")
    add("--pitch_file", default=None, metavar="FILE",
        help="pitch for the one -n input instead of the F0 predictor: a pitch CSV (pitch.py, --export_pitch), "
             "a .f0.npy of preprocess_hubert_f0.py or a MIDI file; used as is, so -t must be 0")
    add("--overwrite", action="store_true",
        help="replace an existing result instead of writing <name>_1.<fmt>, <name>_2.<fmt> ...")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.cluster_infer_ratio <= 1:
        parser.error("-cr/--cluster_infer_ratio must lie in 0..1")
    if args.clip < 0 or args.pad_seconds < 0 or args.linear_gradient < 0:
        parser.error("-cl, -p and -lg must not be negative")
    if not 0 < args.linear_gradient_retain <= 1:
        parser.error("-lgr/--linear_gradient_retain must lie in (0, 1]")
    if args.flow_steps is not None and args.flow_steps < 1:
        parser.error("-fs/--flow_steps must be at least 1")
    if args.noice_scale < 0:
        parser.error("-ns/--noice_scale must not be negative")
    too_far = [t for t in args.trans if abs(t) > MAX_TRANSPOSE]
    if too_far:
        parser.error(f"-t/--trans {too_far[0]:g} is out of range: a pitch shift must lie within "
                     f"-{MAX_TRANSPOSE}..{MAX_TRANSPOSE} semitones (four octaves)")
    if 0 < args.max_slice_seconds < MIN_MAX_SLICE_SECONDS or args.max_slice_seconds < 0:
        parser.error(f"--max_slice_seconds must be 0 (no limit) or at least {MIN_MAX_SLICE_SECONDS:g}")
    if args.pitch_file is not None:
        check_pitch_file_args(parser, args)
    if args.export_pitch:
        check_export_args(parser, args)


def check_pitch_file_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A pitch file belongs to one input and already holds the shifted pitch (an exported CSV is after -t)."""
    if len(args.clean_names) != 1:
        parser.error(f"--pitch_file needs exactly one input -n, got {len(args.clean_names)}")
    if any(t != 0 for t in args.trans):
        parser.error("--pitch_file is used as is: -t must be 0 (shift the pitch in the file instead; "
                     "an exported CSV already holds the shifted pitch)")
    if args.auto_predict_f0:
        parser.error("--pitch_file and -a/--auto_predict_f0 exclude each other: the model would ignore the file")


def check_export_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.auto_predict_f0:
        parser.error("--export_pitch and -a/--auto_predict_f0 exclude each other: the model predicts its own f0")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check_args(parser, args)
    from core.memory import keep_freed_memory
    from inference.convert_files import convert_files

    keep_freed_memory()  # the slices reuse each other's buffers instead of faulting in fresh pages
    convert_files(args)


if __name__ == "__main__":
    run_cli(main)
