"""Run the pipeline on the bundled sample audio (samples/, see samples/CREDITS.md) in a work folder.

Each step runs one of the toolkit's scripts the way a user would (a subprocess, from inside the work
folder, with the scripts' default paths) and prints where its output went and how long it took. Steps
skip work that is already done, so running the demo again is quick.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modules.errors import SvcError, run_cli

REPO = Path(__file__).resolve().parent
SAMPLES = REPO / "samples" / "dataset_raw"


@dataclass(frozen=True)
class Demo:
    work: Path  # every step reads and writes below this folder

    def run(self, script: str, *args: str) -> None:
        """Run a top-level script of this repo with this interpreter, from the work folder."""
        command = [sys.executable, str(REPO / script), *args]
        print(f"  $ {' '.join([Path(sys.executable).name, script, *args])}", flush=True)
        result = subprocess.run(command, cwd=self.work)
        if result.returncode != 0:
            raise SvcError(f"{script} failed (exit {result.returncode}); see its messages above")


def copy_samples(demo: Demo) -> str:
    target = demo.work / "dataset_raw"
    for source in sorted(SAMPLES.rglob("*.wav")):
        destination = target / source.relative_to(SAMPLES)
        if not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return str(target)


def slice_recordings(demo: Demo) -> str:
    demo.run("slice_audio.py", "--in_dir", "dataset_raw", "--out_dir", "dataset_raw_sliced", "--max_clip", "5",
             "--num_processes", "1")
    return str(demo.work / "dataset_raw_sliced")


def resample_dataset(demo: Demo) -> str:
    demo.run("resample.py", "--in_dir", "dataset_raw_sliced", "--num_processes", "1")
    return str(demo.work / "dataset" / "44k")


def make_filelists_and_configs(demo: Demo) -> str:
    demo.run("preprocess_flist_config.py", "--tiny")
    return f"{demo.work / 'filelists'} and {demo.work / 'configs'}"


# (name, function); later stages (features, training, cluster/index, conversion) append here.
STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("copy samples", copy_samples),
    ("slice", slice_recordings),
    ("resample", resample_dataset),
    ("filelists + configs", make_filelists_and_configs),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=str, default="demo_work", help="work folder (created)")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work)
    total = time.perf_counter()
    for number, (name, step) in enumerate(STEPS, 1):
        print(f"[{number}/{len(STEPS)}] {name}", flush=True)
        started = time.perf_counter()
        output = step(demo)
        print(f"  -> {output} ({time.perf_counter() - started:.1f} s)", flush=True)
    print(f"demo finished in {time.perf_counter() - total:.1f} s; everything is in {work}")
    return 0


if __name__ == "__main__":
    run_cli(main)
