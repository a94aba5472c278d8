"""Run the pipeline on the bundled sample audio (samples/, see samples/CREDITS.md) in a work folder.

Each step runs one of the toolkit's scripts the way a user would (a subprocess, from inside the work
folder, with the scripts' default paths) and prints where its output went and how long it took. Steps
skip work that is already done, so running the demo again is quick. The last step measures how closely each
converted song follows its source's melody.
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


@dataclass(frozen=True)
class Conversion:
    """One song of the samples converted into the other speaker's voice."""

    song: Path
    speaker: str
    retrieval: bool = False  # also blend in the target's own features (feature retrieval, -fr -cr 0.5)

    def result_name(self, step: int) -> str:
        """inference_main.py's name for this conversion with the model `G_<step>.pth`."""
        ratio, retrieval = ("_0.5", "_fr") if self.retrieval else ("", "")
        return f"{self.song.name}_0key_{self.speaker}{ratio}_sovits_pm{retrieval}_step{step}.flac"


CONVERSIONS = (
    Conversion(SAMPLES / "vocadito" / "vocadito_14.wav", "sms_tools"),
    Conversion(SAMPLES / "sms_tools" / "sms_singing_female.wav", "vocadito"),
    Conversion(SAMPLES / "sms_tools" / "sms_singing_female.wav", "vocadito", retrieval=True),
)

# The demo's training recipe. Trained from scratch, a So-VITS decoder first learns a cheap imitation of any
# voice: a buzz repeating every hop (86 Hz at 44.1 kHz with hop 512). With 4.1's 2048-point mel loss that
# buzz's harmonics are as far apart as the window's resolution, so the loss sees it as a smooth spectrum much
# like singing, and a few hundred steps at 4.1's learning rate leave the output at 86 Hz whatever the song.
# A 4096-point STFT and 160 mel bands below 8 kHz resolve both the buzz and a voice's harmonics, so the
# loss can only fall by following the f0 excitation; with a 10x learning rate the melody then comes through
# within ~100 steps. A narrower model and 2 s clips make each step ~1 s on two CPU cores. All of it is
# ordinary config, so the result is a normal So-VITS model.
DEMO_CONFIG = {
    "train": dict(batch_size=8, segment_size=8192, learning_rate=1e-3, all_in_mem=True, log_interval=50,
                  eval_interval=100, keep_ckpts=2),
    "data": dict(filter_length=4096, win_length=4096, n_mel_channels=160, mel_fmax=8000),
    "model": dict(hidden_channels=96, inter_channels=96, filter_channels=256, n_layers=3,
                  upsample_initial_channel=128, discriminator_width_divisor=4, use_automatic_f0_prediction=False),
}
CLIP_SECONDS = 2


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
    demo.run("slice_audio.py", "--in_dir", "dataset_raw", "--out_dir", "dataset_raw_sliced",
             "--max_clip", str(CLIP_SECONDS), "--num_processes", "1")
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
    for section, values in DEMO_CONFIG.items():
        config[section].update(values)
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


def convert_songs(demo: Demo) -> str:
    raw = demo.work / "raw"
    raw.mkdir(exist_ok=True)
    model = latest_generator(demo)
    for conversion in CONVERSIONS:
        shutil.copy2(conversion.song, raw / conversion.song.name)
        retrieval = ("-fr", "-cr", "0.5", "-cm", "logs/44k/feature_and_index.pkl") if conversion.retrieval else ()
        demo.run("inference_main.py", "-m", str(model.relative_to(demo.work)), "-c", "logs/44k/config.json",
                 "-n", conversion.song.name, "-s", conversion.speaker, "-f0p", "pm", "-d", "cpu", "--overwrite",
                 *retrieval)
    step = generator_step(model)
    return ", ".join(str(demo.work / "results" / c.result_name(step)) for c in CONVERSIONS)


def check_melodies(demo: Demo) -> str:
    """How closely each result follows its song's melody (f0 by pm, both files), and its hop-rate buzz."""
    from modules.melody import buzz_of_file, compare_files

    step = generator_step(latest_generator(demo))
    for conversion in CONVERSIONS:
        result = demo.work / "results" / conversion.result_name(step)
        match = compare_files(conversion.song, result)
        buzz, natural = buzz_of_file(conversion.song, result), buzz_of_file(conversion.song, conversion.song)
        print(f"  {result.name}: {match.describe()}; hop-rate buzz {_db(buzz)} against the "
              f"harmonics (the source itself: {_db(natural)})", flush=True)
    return "a share near 100 % means the result sings the source's melody; natural singing has ~-20 dB of buzz"


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f} dB"


def latest_generator(demo: Demo) -> Path:
    checkpoints = sorted((demo.work / "logs" / "44k").glob("G_*.pth"), key=generator_step)
    if not checkpoints:
        raise SvcError("training wrote no G_*.pth checkpoint")
    return checkpoints[-1]


def generator_step(path: Path) -> int:
    return int(path.stem[2:])


STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("copy samples", copy_samples),
    ("slice", slice_recordings),
    ("resample", resample_dataset),
    ("speech encoder", speech_encoder),
    ("filelists + configs", make_filelists_and_configs),
    ("features", extract_features),
    ("training", train_model),
    ("cluster model + feature index", train_cluster_and_index),
    ("conversion", convert_songs),
    ("melody check", check_melodies),
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
