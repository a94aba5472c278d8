"""Train per-speaker k-means codebooks on the content features: `logs/44k/kmeans_10000.pt` (spec §3.6)."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.cli_types import int_range
from core.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, default=Path("./dataset/44k"),
                        help="dataset root with one folder of *.wav.soft.pt per speaker")
    parser.add_argument("--output", type=Path, default=Path("logs/44k"), help="folder for kmeans_<n>.pt")
    parser.add_argument("--gpu", action="store_true",
                        help="use the torch mini-batch k-means (CUDA when available, else CPU)")
    parser.add_argument("--minibatch", action="store_true",
                        help="CPU: sklearn MiniBatchKMeans instead of full KMeans (much faster, slightly worse)")
    parser.add_argument("--n_clusters", type=int_range(1), default=10000,
                        help="centres per speaker (clamped to the speaker's frame count)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cluster import train_cluster_model
    from core.fileio import make_output_dir

    make_output_dir(args.output, "--output")
    train_cluster_model(args.dataset, args.output, args.n_clusters, use_gpu=args.gpu, minibatch=args.minibatch)
    return 0


if __name__ == "__main__":
    run_cli(main)
