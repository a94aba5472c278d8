"""Throughput of resample.py: seconds of audio converted per wall-clock second.

Generates a 10-minute dataset (60 files x 10 s, 48 kHz stereo 16-bit: tones with vibrato, noise and
silent edges) in a temp folder, then runs resample.py on it as a user would with --num_processes 1 and 2.
Wall time includes the script's start-up (imports), as a user sees it.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parent.parent


def make_dataset(root: Path, files: int, seconds: float, sr: int = 48000) -> float:
    """Write `files` stereo recordings into root/<speaker>/ and return their total length in seconds."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for k in range(files):
        f0 = 150 + 10 * k
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / sr
        voice = sum(0.3 / h * np.sin(h * phase) for h in range(1, 6))
        voice[: sr // 2] = 0
        voice[-sr // 2:] = 0
        stereo = np.stack([voice, 0.8 * voice], axis=1) + rng.normal(0, 1e-3, (len(t), 2))
        path = root / f"singer{k % 2}" / f"take_{k:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, stereo, sr, subtype="PCM_16")
    return files * seconds


def time_run(in_dir: Path, out_dir: Path, processes: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the script and its workers) for one resample.py run."""
    command = [sys.executable, str(REPO / "resample.py"), "--in_dir", str(in_dir), "--out_dir2", str(out_dir),
               "--num_processes", str(processes)]
    cpu_before = _children_cpu()
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        total = make_dataset(root / "raw", args.files, args.seconds)
        print(f"resample.py on {args.files} x {args.seconds:g} s = {total / 60:.1f} min of 48 kHz stereo audio")
        print(f"  (machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; CPU time is less "
              "sensitive to other load than wall time)")
        for processes in (1, 2):
            wall, cpu = time_run(root / "raw", root / f"out{processes}", processes)
            print(f"  --num_processes {processes}: {wall:6.1f} s wall -> {total / wall:6.1f} s of audio per second "
                  f"({cpu:.1f} CPU s)")
        wall, cpu = time_run(root / "raw", root / "out2", 2)
        print(f"  re-run, all files already done: {wall:.1f} s wall ({cpu:.1f} CPU s, mostly start-up)")


if __name__ == "__main__":
    main()
