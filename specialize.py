"""Specialise a dataset to one source voice (Diff-SVC's B->A workflow): convert every wav of A's dataset with
model B, and replace its content units (`X.wav.soft.pt`) by those of the conversion; F0, spectrogram, volume and
mels stay those of the originals. Training A on the result gives a model that converts B's voice better.

    python preprocess_hubert_f0.py                      # A's original features first
    python specialize.py --in_dir dataset/44k/A -m logs/B/G_30000.pth -c logs/B/config.json -s B
    python train.py -c configs/config.json -m 44k       # unchanged: it reads the new units

Re-running skips the wavs already specialised with the same model, speaker, transposition and f0 predictor.
Exit status: 0 when every wav has its new units, 1 when some failed (each is named with its reason).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli_types import TRANSPOSE
from core.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--in_dir", type=Path, required=True, help="A's wavs (all *.wav below it, e.g. dataset/44k/A)")
    add("-m", "--model_path", type=Path, required=True, help="model B: its G_*.pth")
    add("-c", "--config_path", type=Path, required=True, help="model B's config.json")
    add("-s", "--speaker", required=True, help="the speaker of model B to convert into")
    add("-t", "--trans", type=TRANSPOSE, default=0.0, help="pitch shift of the conversion in semitones (default 0)")
    add("-f0p", "--f0_predictor", default="pm", help="f0 predictor of the conversion (default pm)")
    add("--dataset_config", type=Path, default=Path("configs/config.json"),
        help="the config A trains with: its speech encoder computes the units (default configs/config.json)")
    add("--pattern", default="*.wav", help="only the wavs under --in_dir matching this glob (default *.wav)")
    add("--keep_converted", type=Path, default=None,
        help="also write the converted audio to this folder (outside the dataset), same relative names")
    add("--pretrain_dir", type=Path, default=Path("pretrain"), help="folder of the pretrained encoders")
    add("-d", "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from core.cli_types import check_device
    from workflows.specialise import SpecialiseSettings, specialise_dataset

    check_device(args.device)
    settings = SpecialiseSettings(
        model_path=args.model_path, config_path=args.config_path, speaker=args.speaker,
        dataset_config=args.dataset_config, trans=args.trans, f0_predictor=args.f0_predictor,
        pretrain_dir=args.pretrain_dir, device=args.device, keep_converted=args.keep_converted, pattern=args.pattern)
    result = specialise_dataset(args.in_dir, settings)
    return 1 if result.failed else 0


if __name__ == "__main__":
    run_cli(main)
