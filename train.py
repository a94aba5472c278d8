"""Train a So-VITS model (so-vits-svc 4.1's `train.py`): `python train.py -c configs/config.json -m 44k`.

Writes logs/<model>/{config.json, train.log, G_<step>.pth, D_<step>.pth, TensorBoard events, eval/} and resumes
from the newest G/D pair found there (G_0.pth/D_0.pth base models included). Shows steps done, rate and ETA.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default="./configs/config.json", help="config JSON")
    parser.add_argument("-m", "--model", required=True, help="run name; the model dir is <logs_dir>/<model>")
    parser.add_argument("--logs_dir", default="logs", help="folder holding the model dirs (default: logs)")
    parser.add_argument("--cpu_processes", type=int, default=int(os.environ.get("SVC_CPU_PROCESSES", 1)),
                        help="on a machine without CUDA: number of gloo processes (default 1, or $SVC_CPU_PROCESSES)")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="DataLoader workers per process (default: 4.1's rule; 0 with all_in_mem)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop after this global step, saving a checkpoint; a run already there trains "
                             "nothing (default: run all epochs)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is available")
    args = parser.parse_args(argv)
    if args.cpu_processes < 1:
        parser.error("--cpu_processes must be at least 1")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error("--num_workers must not be negative")
    if args.max_steps is not None and args.max_steps < 0:
        parser.error("--max_steps must not be negative")
    return args


def main() -> int:
    args = parse_args()
    from core.config import load_model_config
    from core.fileio import make_output_dir
    from core.progress import route_logs_through_tqdm
    from training.loop import RunOptions, launch, prepare_model_dir

    route_logs_through_tqdm()
    hps = load_model_config(args.config, need_train=True)
    model_dir = make_output_dir(Path(args.logs_dir) / args.model, "--logs_dir/-m")
    prepare_model_dir(hps, model_dir)
    options = RunOptions(model_dir=model_dir, num_workers=args.num_workers, max_steps=args.max_steps,
                         cpu_processes=args.cpu_processes, device="cpu" if args.cpu else None)
    return launch(hps, options)


if __name__ == "__main__":
    from core.errors import run_cli

    run_cli(main)
