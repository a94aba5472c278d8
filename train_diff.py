"""Train the shallow-diffusion model: `python train_diff.py -c configs/diffusion.yaml` (spec §3.5, §11.4)."""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from core.config import load_diffusion_config
from core.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the 4.1-compatible shallow-diffusion model.")
    parser.add_argument("-c", "--config", type=str, required=True, help="diffusion YAML (configs/diffusion.yaml)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop after this global step, saving a checkpoint; a run already there trains "
                             "nothing (default: run all epochs)")
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 0:
        parser.error("--max_steps must not be negative")
    return args


def main() -> int:
    args = parse_args()
    from diffusion.trainer import check_config, train  # after argument parsing: --help stays fast
    from core.progress import route_logs_through_tqdm

    route_logs_through_tqdm()
    config = load_diffusion_config(args.config)
    check_config(config)
    sink = logger.add(Path(config.env.expdir) / "log_info.txt", level="INFO")
    try:
        step = train(config, max_steps=args.max_steps)
    finally:
        logger.remove(sink)
    logger.info(f"training finished at step {step}")
    return 0


if __name__ == "__main__":
    run_cli(main)
