"""Train the shallow-diffusion model: `python train_diff.py -c configs/diffusion.yaml` (spec §3.5, §11.4)."""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from modules.config import load_config
from modules.errors import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description="Train the 4.1-compatible shallow-diffusion model.")
    parser.add_argument("-c", "--config", type=str, required=True, help="diffusion YAML (configs/diffusion.yaml)")
    args = parser.parse_args()
    from diffusion.trainer import check_config, train  # after argument parsing: --help stays fast

    config = load_config(args.config)
    check_config(config)
    sink = logger.add(Path(config.env.expdir) / "log_info.txt", level="INFO")
    try:
        step = train(config)
    finally:
        logger.remove(sink)
    logger.info(f"training finished at step {step}")
    return 0


if __name__ == "__main__":
    run_cli(main)
