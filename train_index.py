"""Build per-speaker faiss feature-retrieval indexes: `logs/44k/feature_and_index.pkl` (spec §3.7)."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root_dir", type=Path, default=Path("dataset/44k"),
                        help="dataset root with one folder of *.wav.soft.pt per speaker")
    parser.add_argument("-c", "--config", type=Path, default=Path("./configs/config.json"),
                        help="config whose 'spk' map names the speakers and their ids")
    parser.add_argument("--output_dir", type=Path, default=Path("logs/44k"), help="folder for feature_and_index.pkl")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cluster import build_index_file
    from core.fileio import make_output_dir

    make_output_dir(args.output_dir, "--output_dir")
    build_index_file(args.root_dir, args.config, args.output_dir)
    return 0


if __name__ == "__main__":
    run_cli(main)
