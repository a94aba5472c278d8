"""Shallow-diffusion time per second of audio, per sampler, at 4.1's defaults.

Default model size (20 layers x 512 channels, 768-d units, random weights), k_step 100, speedup 10,
on CPU unless --device says otherwise. Run: .venv/bin/python bench/bench_diffusion.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion import METHODS, Unit2Mel, Unit2MelDims  # noqa: E402

FRAME_RATE = 44100 / 512


def time_method(model: Unit2Mel, inputs: tuple[torch.Tensor, ...], method: str | None, k_step: int,
                speedup: int) -> float:
    units, f0, volume, mel = inputs
    start = time.perf_counter()
    model.infer(units, f0, volume, gt_spec=mel, k_step=k_step, method=method, speedup=speedup,
                generator=torch.Generator(device=units.device).manual_seed(0))
    if units.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="audio length to diffuse")
    parser.add_argument("--k_step", type=int, default=100)
    parser.add_argument("--speedup", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--ddpm", action="store_true", help="also time plain DDPM (k_step model calls)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = Unit2Mel(Unit2MelDims()).to(args.device).eval()
    frames = round(args.seconds * FRAME_RATE)
    g = torch.Generator().manual_seed(1)
    inputs = tuple(x.to(args.device) for x in (torch.randn(1, frames, 768, generator=g),
                                               200 + 50 * torch.rand(1, frames, 1, generator=g),
                                               0.1 * torch.rand(1, frames, 1, generator=g),
                                               -6 + torch.randn(1, frames, 128, generator=g)))
    time_method(model, inputs, "ddim", 2, 1)  # warm-up
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.seconds:g} s audio "
          f"({frames} frames), k_step {args.k_step}, speedup {args.speedup}, model 20x512 (random weights)")
    methods = list(METHODS) + ([None] if args.ddpm else [])
    for method in methods:
        elapsed = time_method(model, inputs, method, args.k_step, args.speedup if method else 1)
        print(f"{method or 'ddpm':>13}: {elapsed / args.seconds:7.3f} s per second of audio")


if __name__ == "__main__":
    main()
