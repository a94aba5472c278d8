"""argparse `type=` helpers shared by the entry scripts: numbers that are finite and in range, and device names.

A value outside its range is refused while the flags are parsed, before any work, with argparse's one-line
"argument -t/--trans: ..." message. The web UI and the server check their fields with the same functions
(`check_number`), so a NaN cannot slip past a `abs(x) > limit` test anywhere.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

from core.errors import SvcError

MAX_TRANSPOSE = 48.0  # semitones: four octaves either way is beyond any voice
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000


def bounds_text(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        left, right = ("(" if open_low else "["), (")" if open_high else "]")
        return f"in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f"{'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f"{'<' if open_high else '<='} {high:g}"
    return "a finite number"


def check_number(value: float, name: str, low: float | None = None, high: float | None = None,
                 open_low: bool = False, open_high: bool = False) -> float:
    """`value` if it is finite and within the bounds, else an SvcError naming `name` and the range."""
    if not math.isfinite(value):
        raise SvcError(f"{name} must be a finite number, got {value}")
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    if below or above:
        raise SvcError(f"{name} must be {bounds_text(low, high, open_low, open_high)}, got {value:g}")
    return value


def finite_float(low: float | None = None, high: float | None = None, open_low: bool = False,
                 open_high: bool = False) -> Callable[[str], float]:
    """An argparse type: a float that is finite and within the bounds (open bounds exclude the end)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check_number(value, "the value", low, high, open_low, open_high)
        except SvcError as error:
            raise argparse.ArgumentTypeError(str(error).replace("the value ", "", 1)) from None

    parse.__name__ = "number"
    return parse


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer within low..high (either may be open-ended)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bounds_text(low, high, False, False)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


TRANSPOSE = finite_float(-MAX_TRANSPOSE, MAX_TRANSPOSE)
SLICE_DB = finite_float(-100.0, 0.0, open_low=True, open_high=True)  # 0 dB and above leave no audio
SAMPLE_RATE = int_range(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)


def check_device(device: str | None, flag: str = "-d/--device") -> str | None:
    """A device torch can use here (cpu, cuda, cuda:N, mps), or None for the default; SvcError otherwise."""
    if device is None or device == "":
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise SvcError(f"{flag} {device!r} is not a device; choose one of: {', '.join(available_devices())}") from None
    if parsed.type == "cuda" and not _cuda_index_ok(parsed.index):
        raise SvcError(f"{flag} {device!r} is not available here; choose one of: {', '.join(available_devices())}")
    if parsed.type == "mps" and not _mps_available():
        raise SvcError(f"{flag} {device!r} is not available here; choose one of: {', '.join(available_devices())}")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise SvcError(f"{flag} {device!r} is not supported; choose one of: {', '.join(available_devices())}")
    return device


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def _cuda_index_ok(index: int | None) -> bool:
    import torch

    return torch.cuda.is_available() and (index is None or index < torch.cuda.device_count())


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
