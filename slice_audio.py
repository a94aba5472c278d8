"""Cut long recordings in dataset_raw/<speaker>/ into clips on silence, for training.

Each input `<stem>.<ext>` becomes `<out_dir>/<speaker>/<stem>_0.wav`, `<stem>_1.wav`, ... (voiced parts
only; nested folders are mirrored). Sources are never modified. Voiced stretches longer than --max_clip
seconds are split at their quietest point between half the limit and the limit. Then run
`resample.py --in_dir <out_dir>`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from preprocess.file_jobs import default_workers
from preprocess.dataprep import SliceSettings, folder_overlap, slice_dataset
from core.cli_types import SLICE_DB, finite_float
from core.errors import SvcError, run_cli
from core.fileio import make_output_dir
from core.slicer import Slicer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in_dir", type=str, default="./dataset_raw", help="source folder, one sub-folder per speaker")
    parser.add_argument("--out_dir", type=str, default="./dataset_raw_sliced",
                        help="output folder (apart from --in_dir: not the same, not inside it)")
    parser.add_argument("--threshold", type=SLICE_DB, default=-40.0, metavar="DB",
                        help="RMS below this (dB re full scale) counts as silence")
    parser.add_argument("--min_length", type=finite_float(0), default=5000, metavar="MS",
                        help="a clip is cut only once it is at least this long")
    parser.add_argument("--min_interval", type=finite_float(0), default=300, metavar="MS",
                        help="shortest silence that may be cut")
    parser.add_argument("--hop_size", type=finite_float(0, open_low=True), default=20, metavar="MS",
                        help="RMS frame hop")
    parser.add_argument("--max_sil_kept", type=finite_float(0), default=500, metavar="MS",
                        help="longest silence kept at each side of a cut")
    parser.add_argument("--max_clip", type=finite_float(), default=15.0, metavar="S",
                        help="split voiced stretches longer than this; 0 = never")
    parser.add_argument("--num_processes", type=int, default=default_workers(), help="parallel worker processes")
    parser.add_argument("--force", action="store_true", help="re-slice files that are already done")
    args = parser.parse_args()
    overlap = folder_overlap(Path(args.in_dir), Path(args.out_dir), "--in_dir", "--out_dir")
    if overlap:
        parser.error(overlap)
    if args.num_processes < 1 or args.max_clip < 0:
        parser.error("--num_processes must be positive and --max_clip not negative")
    return args


def main() -> int:
    args = parse_args()
    settings = SliceSettings(threshold_db=args.threshold, min_length_ms=args.min_length,
                             min_interval_ms=args.min_interval, hop_size_ms=args.hop_size,
                             max_sil_kept_ms=args.max_sil_kept, max_clip_s=args.max_clip or None, force=args.force)
    try:
        Slicer(44100, settings.threshold_db, settings.min_length_ms, settings.min_interval_ms,
               settings.hop_size_ms, settings.max_sil_kept_ms, settings.max_clip_s)
    except ValueError as error:
        raise SvcError(f"invalid slicer settings: {error}") from None
    make_output_dir(Path(args.out_dir), "--out_dir")
    report = slice_dataset(Path(args.in_dir), Path(args.out_dir), settings, args.num_processes)
    report.log(f"slice_audio.py -> {args.out_dir}")
    if not report.done and not report.skipped:
        raise SvcError(f"no audio file in {args.in_dir}/<speaker>/ could be sliced")
    return 0


if __name__ == "__main__":
    run_cli(main)
