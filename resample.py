"""dataset_raw/<speaker>/ -> dataset/44k/<speaker>/: mono, trimmed, resampled, normalised 16-bit wavs.

Same flags and per-file steps as so-vits-svc 4.1's resample.py, plus any audio format libsndfile reads,
nested folders, a loudness target, parallel workers, skipping of finished files and a final report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from preprocess.file_jobs import default_workers
from preprocess.dataprep import ResampleSettings, folder_overlap, resample_dataset
from core.cli_types import SAMPLE_RATE, finite_float
from core.errors import SvcError, run_cli
from core.fileio import make_output_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sr2", type=SAMPLE_RATE, default=44100, help="target sample rate")
    parser.add_argument("--in_dir", type=str, default="./dataset_raw", help="source folder, one sub-folder per speaker")
    parser.add_argument("--out_dir2", type=str, default="./dataset/44k",
                        help="output folder (apart from --in_dir: not the same, not inside it)")
    parser.add_argument("--skip_loudnorm", action="store_true", help="skip the peak normalisation")
    parser.add_argument("--loudnorm", type=finite_float(-70, 0), default=None, metavar="LUFS",
                        help="normalise to this integrated loudness (e.g. -23) instead of the peak; "
                             "the gain is lowered where it would clip")
    parser.add_argument("--keep_silence", action="store_true",
                        help="keep the silence at the ends of each file (by default it is trimmed at 40 dB below "
                             "the peak, as 4.1 does)")
    parser.add_argument("--num_processes", type=int, default=default_workers(),
                        help="parallel worker processes (default as 4.1: cores - 2 above 4 cores, else 1)")
    parser.add_argument("--force", action="store_true", help="redo files whose output is already up to date")
    args = parser.parse_args()
    if args.loudnorm is not None and args.skip_loudnorm:
        parser.error("--loudnorm and --skip_loudnorm exclude each other")
    if args.sr2 <= 0 or args.num_processes < 1:
        parser.error("--sr2 and --num_processes must be positive")
    overlap = folder_overlap(Path(args.in_dir), Path(args.out_dir2), "--in_dir", "--out_dir2")
    if overlap:
        parser.error(overlap)
    return args


def main() -> int:
    args = parse_args()
    settings = ResampleSettings(sr=args.sr2, peak_normalise=not args.skip_loudnorm, lufs=args.loudnorm,
                                trim=not args.keep_silence, force=args.force)
    make_output_dir(Path(args.out_dir2), "--out_dir2")
    report = resample_dataset(Path(args.in_dir), Path(args.out_dir2), settings, args.num_processes)
    report.log(f"resample.py -> {args.out_dir2}")
    if not report.done and not report.skipped:
        raise SvcError(f"no audio file in {args.in_dir}/<speaker>/ could be converted")
    if report.failed:
        logger.error(f"{len(report.failed)} file(s) failed (listed above); the other files are done")
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
