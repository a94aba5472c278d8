"""Print So-VITS generator inference speed (real-time factor) for the normal and tiny templates.

Usage: .venv/bin/python bench/bench_models.py [--seconds 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import SynthesizerTrn  # noqa: E402
from core.config import load_template  # noqa: E402


def bench(template: str, seconds: float, device: str) -> None:
    hps = load_template(template)
    model = SynthesizerTrn.from_config(hps).to(device).eval()
    frames = int(seconds * 44100 / 512)
    c = torch.randn(1, model.config.ssl_dim, frames, device=device)
    f0 = torch.full((1, frames), 220.0, device=device)
    uv = torch.ones(1, frames, device=device)
    g = torch.tensor([0], device=device)
    model.infer(c, f0, uv, g=g)
    start = time.perf_counter()
    model.infer(c, f0, uv, g=g)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"{template}: {seconds:.1f} s of audio in {elapsed:.2f} s (RTF {elapsed / seconds:.3f}) on {device}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    for template in ("config_template.json", "config_tiny_template.json"):
        bench(template, args.seconds, args.device)


if __name__ == "__main__":
    main()
