"""Blend several So-VITS generator checkpoints into one (static model mix, as 4.1's web UI does).

    python mix_model.py -i a/G_1000.pth b/G_2000.pth -p 70 30 --mode convex -o output.pth

convex: weights are the softmax of percent/100; linear: weights are percent/100 as given.
The models must share one architecture (same config); the first checkpoint's other entries are kept.
"""
from __future__ import annotations

import argparse

import torch

from core.errors import SvcError, run_cli
from core.fileio import safe_torch_load, torch_save


def mix_weights(percentages: list[float], mode: str) -> list[float]:
    values = torch.tensor(percentages, dtype=torch.float64) / 100.0
    if mode == "convex":
        values = torch.softmax(values, dim=0)
    return values.tolist()


def mix_checkpoints(paths: list[str], percentages: list[float], mode: str) -> dict:
    """Weighted sum of every tensor of the checkpoints' `model` dicts."""
    if len(paths) < 2:
        raise SvcError("give at least two checkpoints to mix")
    if len(paths) != len(percentages):
        raise SvcError(f"{len(paths)} checkpoints but {len(percentages)} percentages")
    weights = mix_weights(percentages, mode)
    checkpoints = [safe_torch_load(p) for p in paths]
    for path, ckpt in zip(paths, checkpoints):
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise SvcError(f"{path} is not a So-VITS checkpoint (no 'model' entry)")
    first = checkpoints[0]["model"]
    mixed = {}
    for key, tensor in first.items():
        parts = []
        for path, ckpt in zip(paths, checkpoints):
            other = ckpt["model"].get(key)
            if other is None or other.shape != tensor.shape:
                raise SvcError(f"{path} does not match the first model at '{key}': the models must share one config")
            parts.append(other.double())
        mixed[key] = sum(w * p for w, p in zip(weights, parts)).to(tensor.dtype)
    return {**checkpoints[0], "model": mixed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inputs", nargs="+", required=True, help="generator checkpoints G_*.pth")
    parser.add_argument("-p", "--percentages", nargs="+", type=float, required=True, help="one weight per model")
    parser.add_argument("--mode", choices=["convex", "linear"], default="convex")
    parser.add_argument("-o", "--output", default="output.pth")
    args = parser.parse_args()
    torch_save(mix_checkpoints(args.inputs, args.percentages, args.mode), args.output)
    print(f"mixed model written to {args.output}")


if __name__ == "__main__":
    run_cli(main)
