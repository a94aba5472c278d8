"""`--precision`: which arithmetic a conversion runs in, and what `auto` picks on this machine.

    fp32   4.1's computation in torch float32 (sample-exact with 4.1 given the same seed)
    onnx   the speech encoder (fairseq HuBERT family, e.g. vec768l12) and the NSF-HiFiGAN decoder body on ONNX
           Runtime, float32 (CPU; equal to fp32 up to float rounding)
    int8   as onnx, with the decoder body's wide convolutions in int8 (CPU; the fastest path on AVX2 CPUs;
           within the bound below on the tiny and default-size models)
    bf16   the speech encoder and the So-VITS model under torch bfloat16 autocast: fast on CPUs with
           AVX512-BF16 or AMX and on GPUs with bf16, emulated and slower elsewhere (a warning says so);
           it exceeds the seed-to-seed bound below (measured on the tiny random model, emulated bf16),
           so auto never picks it
    auto   int8 on a CPU with ONNX Runtime, else fp32 (on a GPU: fp32)

Every path keeps the fp32 random draws. The quality bound: at the same draws, the log-mel distance to the
fp32 output must stay below the distance between two fp32 outputs with different seeds at noise scale 0.4
(tests/test_precision.py on the tiny model, bench/bench_vs_base.py on the default-size model).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from core.errors import SvcError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "onnx", "int8", "bf16")
ORT_PRECISIONS = ("onnx", "int8")
PRECISION_HELP = ("arithmetic of the conversion: fp32 is 4.1's; auto picks the fastest path that keeps the output "
                  "within the model's own randomness on this machine (README: Convert, --precision)")
NO_CLEANUP_HELP = ("skip the output stage (DC removal, silence in the source's pauses): with --precision fp32 "
                   "this is so-vits-svc 4.1's computation sample for sample")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise SvcError(f"unknown precision {name!r} (choose one of: {', '.join(PRECISIONS)})")
    return name


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. on macOS or Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def check_device_type(requested: str, device_type: str) -> None:
    """Refuse a CPU-only precision on another kind of device (callable before anything is loaded)."""
    if requested in ORT_PRECISIONS and device_type != "cpu":
        raise SvcError(f"--precision {requested} runs on the CPU only; use fp32 or bf16 on {device_type}")


def native_bf16(device: torch.device) -> bool:
    """True where bfloat16 matrix arithmetic runs in hardware on `device`."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision to run: `auto` resolved for this machine; an explicit one checked against it."""
    from core.onnx_cache import onnxruntime_available

    check_precision(requested)
    if requested == "auto":
        return "int8" if device.type == "cpu" and onnxruntime_available() else "fp32"
    if requested == "bf16" and not native_bf16(device):
        logger.warning(f"--precision bf16: this {device.type} has no native bfloat16 arithmetic, so bf16 is "
                       f"emulated and slower than fp32")
    if requested in ORT_PRECISIONS:
        check_device_type(requested, device.type)
        if not onnxruntime_available():
            raise SvcError(f"--precision {requested} needs onnxruntime (pip install -r requirements.txt)")
    return requested


def log_mel_distance(a, b, sr: int = 44100) -> float:
    """Mean absolute difference of the log-mel spectrograms (the training loss's 80 bands) of two equal-rate signals `[N]`:
    the yardstick of the quality bound (below the fp32 seed-to-seed distance at noise scale 0.4)."""
    import torch

    from core.dsp import mel_spectrogram

    n = min(len(a), len(b))
    pair = torch.stack([torch.as_tensor(a[:n]).float(), torch.as_tensor(b[:n]).float()])
    mel = mel_spectrogram(pair, sr)  # already log-compressed: log(clamp(mel, 1e-5))
    return float((mel[0] - mel[1]).abs().mean())


def f0_difference_cents(a, b, sr: int = 44100, hop: int = 512) -> float:
    """Median absolute f0 difference in cents over frames voiced in both signals (pm predictor)."""
    import numpy as np

    from f0_predictor import get_f0_predictor

    predictor = get_f0_predictor("pm", hop, sr, "cpu", 0.05, "pretrain")
    n = min(len(a), len(b))
    f0_a, uv_a = predictor.compute_f0_uv(np.asarray(a[:n], dtype=np.float32))
    f0_b, uv_b = predictor.compute_f0_uv(np.asarray(b[:n], dtype=np.float32))
    both = (uv_a > 0) & (uv_b > 0) & (f0_a > 0) & (f0_b > 0)
    if not both.any():
        return 0.0
    return float(np.median(np.abs(1200 * np.log2(f0_a[both] / f0_b[both]))))
