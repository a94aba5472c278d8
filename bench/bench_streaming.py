"""Live conversion speed (inference/streaming.StreamingConverter) for block sizes 0.1 ... 1.0 s.

Builds the demo's narrowed So-VITS model (demo.py's DEMO_CONFIG) with random weights and a random real-size
ContentVec (bench_infer.py's), then streams a sung-like tone at 48 kHz through the converter, block by block,
for each block size and f0 predictor (pm; fcpe when its weights are found, e.g. torchfcpe's bundled
checkpoint). For each it prints the compute time per block (median and 90th percentile) against the block
length, whether it keeps up (90th percentile below the block), and the end-to-end latency a live stream
would have: block + lookahead + crossfade + half the SOLA search + compute (median). Random weights give
meaningless audio but the same work as a trained model.

Usage: .venv/bin/python bench/bench_streaming.py [--blocks 6] [--context 1.0] [--threads N] [--f0 pm fcpe]
       [--precision auto|fp32|onnx|int8|bf16]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_infer import test_signal, write_contentvec  # noqa: E402
from core.config import load_template, save_config  # noqa: E402
from core.errors import SvcError, run_cli  # noqa: E402
from demo import DEMO_CONFIG  # noqa: E402
from inference.precision import PRECISIONS  # noqa: E402
from inference.streaming import StreamingConverter, StreamSettings  # noqa: E402
from inference.svc import ConversionOptions, Svc  # noqa: E402

RATE = 48000
BLOCK_SIZES = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class BlockTiming:
    block: float       # seconds
    median: float      # compute seconds per block
    p90: float
    latency: float     # end-to-end seconds

    @property
    def keeps_up(self) -> bool:
        return self.p90 < self.block


def build_svc(root: Path, precision: str) -> Svc:
    torch.manual_seed(0)
    pretrain = root / "pretrain"
    pretrain.mkdir()
    write_contentvec(pretrain / "checkpoint_best_legacy_500.pt")
    config = load_template("config_template.json")
    for section, values in DEMO_CONFIG.items():
        if section in ("data", "model"):
            config[section].update(values)
    config.spk = {"speaker0": 0, "speaker1": 1}
    config.model.n_speakers = 2
    save_config(config, root / "config.json")
    from models import SynthesizerTrn
    torch.save({"model": SynthesizerTrn.from_config(config).state_dict(), "iteration": 0}, root / "G_0.pth")
    return Svc(root / "G_0.pth", root / "config.json", device="cpu", pretrain_dir=pretrain, precision=precision)


def time_blocks(svc: Svc, audio: np.ndarray, predictor: str, block: float, blocks: int,
                settings: StreamSettings) -> BlockTiming:
    converter = StreamingConverter(svc, ConversionOptions(speaker="speaker0", f0_predictor=predictor,
                                                          noice_scale=0.4), settings)
    size = int(block * RATE)
    converter.process(audio[:size])  # warm-up: first call builds the predictor
    times = []
    for i in range(1, blocks + 1):
        chunk = audio[(i * size) % (len(audio) - size):][:size]
        started = time.perf_counter()
        converter.process(chunk)
        times.append(time.perf_counter() - started)
    median, p90 = float(np.median(times)), float(np.percentile(times, 90))
    return BlockTiming(block, median, p90, block + converter.latency_samples / RATE + median)


def report(predictor: str, timings: list[BlockTiming]) -> None:
    print(f"\nf0 predictor {predictor}")
    print(f"{'block':>7} {'compute median':>15} {'p90':>8} {'share':>6} {'keeps up':>9} {'latency':>9}")
    for t in timings:
        print(f"{t.block * 1000:5.0f}ms {t.median * 1000:13.0f}ms {t.p90 * 1000:6.0f}ms {t.median / t.block:6.0%} "
              f"{'yes' if t.keeps_up else 'no':>9} {t.latency * 1000:7.0f}ms")
    keeping = [t for t in timings if t.keeps_up]
    if keeping:
        best = keeping[0]
        print(f"smallest block that keeps up: {best.block:g} s, end-to-end latency {best.latency * 1000:.0f} ms")
    else:
        print("no block size up to 1 s keeps up on this machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks per block size (after one warm-up)")
    parser.add_argument("--context", type=float, default=1.0, help="left context in seconds")
    parser.add_argument("--lookahead", type=float, default=0.0, help="lookahead in seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--f0", nargs="+", default=["pm", "fcpe"], help="f0 predictors to time")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="Svc precision as realtime.py's (default auto)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = StreamSettings(RATE, context_seconds=args.context, lookahead_seconds=args.lookahead,
                              silence_threshold_db=-200.0)
    audio = test_signal(12.0, RATE)
    audio = audio[audio != 0] if (audio != 0).any() else audio
    with tempfile.TemporaryDirectory() as folder:
        svc = build_svc(Path(folder), args.precision)
        print(f"demo-size model, random weights; torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"{RATE} Hz, context {args.context:g} s, lookahead {args.lookahead:g} s, crossfade "
              f"{settings.crossfade_seconds:g} s, SOLA search {settings.sola_search_seconds:g} s, "
              f"precision {svc.precision}")
        for predictor in args.f0:
            try:
                timings = [time_blocks(svc, audio, predictor, block, args.blocks, settings) for block in BLOCK_SIZES]
            except SvcError as error:
                print(f"\nf0 predictor {predictor}: skipped ({error})")
                continue
            report(predictor, timings)


if __name__ == "__main__":
    run_cli(main)
