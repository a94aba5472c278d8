"""Run the pipeline on the bundled sample audio (samples/, see samples/CREDITS.md) in a work folder.

Each step runs one of the toolkit's scripts the way a user would (a subprocess, from inside the work
folder, with the scripts' default paths) and prints where its output went and how long it took. Steps
skip work that is already done, so running the demo again is quick.
"""
from __future__ import annotations

import argparse
import json
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
SHARED = REPO.parent / "shared"
SOURCE_SONG = SAMPLES / "sms_tools" / "sms_singing_female.wav"  # converted into the other singer's voice
TARGET_SPEAKER = "vocadito"


@dataclass(frozen=True)
class Demo:
    work: Path        # every step reads and writes below this folder
    train_steps: int  # generator steps of the short CPU training

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


def speech_encoder(demo: Demo) -> str:
    from modules.demo_assets import resolve_demo_encoder

    _, _, source = resolve_demo_encoder(demo.work / "pretrain", shared_dir=SHARED)
    return source


def make_filelists_and_configs(demo: Demo) -> str:
    demo.run("preprocess_flist_config.py", "--tiny", "--speech_encoder", "whisper-ppg-base")
    config_path = demo.work / "configs" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # The tiny template with a narrower decoder and discriminator and half-length training slices: about
    # 1 s per step on two CPU cores instead of about 20, so a few minutes of training get somewhere.
    config["train"].update(batch_size=4, segment_size=5120, log_interval=20, eval_interval=100, keep_ckpts=2)
    config["model"].update(upsample_initial_channel=128, discriminator_width_divisor=4)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return f"{demo.work / 'filelists'} and {config_path}"


def extract_features(demo: Demo) -> str:
    demo.run("preprocess_hubert_f0.py", "--f0_predictor", "pm", "--num_processes", "1", "-d", "cpu")
    return str(demo.work / "dataset" / "44k") + " (.soft.pt, .f0.npy, .spec.pt next to each wav)"


def train_model(demo: Demo) -> str:
    demo.run("train.py", "-c", "configs/config.json", "-m", "44k", "--max_steps", str(demo.train_steps), "--cpu")
    return str(latest_generator(demo))


def train_cluster_and_index(demo: Demo) -> str:
    demo.run("train_cluster.py", "--n_clusters", "100")
    demo.run("train_index.py", "-c", "configs/config.json")
    return f"{demo.work / 'logs' / '44k' / 'kmeans_100.pt'} and {demo.work / 'logs' / '44k' / 'feature_and_index.pkl'}"


def convert_song(demo: Demo) -> str:
    raw = demo.work / "raw"
    raw.mkdir(exist_ok=True)
    shutil.copy2(SOURCE_SONG, raw / SOURCE_SONG.name)
    model = str(latest_generator(demo).relative_to(demo.work))
    common = ("-m", model, "-c", "logs/44k/config.json", "-n", SOURCE_SONG.name, "-s", TARGET_SPEAKER,
              "-f0p", "pm", "-d", "cpu")
    demo.run("inference_main.py", *common)
    demo.run("inference_main.py", *common, "-fr", "-cr", "0.5", "-cm", "logs/44k/feature_and_index.pkl")
    return ", ".join(str(p) for p in sorted((demo.work / "results").glob(f"{SOURCE_SONG.name}_*")))


def latest_generator(demo: Demo) -> Path:
    checkpoints = sorted((demo.work / "logs" / "44k").glob("G_*.pth"), key=lambda p: int(p.stem[2:]))
    if not checkpoints:
        raise SvcError("training wrote no G_*.pth checkpoint")
    return checkpoints[-1]


STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("copy samples", copy_samples),
    ("slice", slice_recordings),
    ("resample", resample_dataset),
    ("speech encoder", speech_encoder),
    ("filelists + configs", make_filelists_and_configs),
    ("features", extract_features),
    ("training", train_model),
    ("cluster model + feature index", train_cluster_and_index),
    ("conversion", convert_song),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=str, default="demo_work", help="work folder (created)")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.add_argument("--train_steps", type=int, default=300, help="generator steps of the CPU training")
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work, args.train_steps)
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
